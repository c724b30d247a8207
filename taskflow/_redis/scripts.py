"""The bundled Lua scripts of the Redis broker and result store (in ``lua/``).

Every state change of the broker, and every record write of the result store that must be
atomic, is one script. Each script states its arguments and return values in its first
lines. The broker's scripts share helpers (``common.lua``, prepended here); the result
store's (``result_*.lua``) and the fetch share what task records have in common
(``records.lua``).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["BROKER_SCRIPTS", "RESULT_SCRIPTS", "load_script"]

BROKER_SCRIPTS = ("publish", "fetch", "settle", "admin")
RESULT_SCRIPTS = ("result_update", "result_value", "result_create", "result_restart")


def load_script(name: str) -> str:
    """The text of a bundled Lua script, after what it shares: broker scripts get the
    helpers (``common.lua``) first; the result store's scripts and the fetch, which marks
    records, get what records share (``records.lua``)."""
    folder = resources.files("taskflow._redis").joinpath("lua")
    parts = [] if name.startswith("result_") else ["common"]
    if name.startswith("result_") or name == "fetch":
        parts.append("records")
    parts.append(name)
    return "\n".join(folder.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in parts)
