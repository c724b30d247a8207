-- What task records share, prepended to the result store's scripts and to the broker's
-- fetch (which marks records running): the final statuses, as the JSON text they are
-- stored as. A record with one of them never changes again (but for a replay).
local TERMINAL = {['"succeeded"'] = true, ['"failed"'] = true, ['"cancelled"'] = true,
  ['"expired"'] = true}
