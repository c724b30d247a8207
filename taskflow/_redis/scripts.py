"""The bundled Lua scripts of the Redis broker and result store (in ``lua/``).

Every state change of the broker, and every record write of the result store that must be
atomic, is one script. Each script states its arguments and return values in its first
lines. The broker's scripts share helpers (``common.lua``: those a script calls are
prepended here); the result store's scripts (``result_*.lua``), the fetch, the settle and
the admin share what task records have in common (``records.lua``), the record updates,
the settle (which writes an outcome with its ack) and the admin (whose purge closes the
records of what it drops) the merge of a record (``record_merge.lua``), and the record
creates and the publish (which creates the queued records of a linked
store with its messages) the create of a record (``record_create.lua``).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["BROKER_SCRIPTS", "RESULT_SCRIPTS", "load_script"]

BROKER_SCRIPTS = ("publish", "fetch", "settle", "admin")
RESULT_SCRIPTS = ("result_update", "result_value", "result_create", "result_restart")


@functools.cache
def load_script(name: str) -> str:
    """The text of a bundled Lua script, after what it shares: broker scripts get the
    helpers (``common.lua``) first; the result store's scripts and the broker's that write
    records (the admin's purge closes them) get what records share (``records.lua``), to
    merge one ``record_merge.lua``, and to create one ``record_create.lua``. Read and
    assembled once per process (every connection registers the scripts, and registers
    them again after a restart of the server)."""
    folder = resources.files("taskflow._redis").joinpath("lua")

    def read(part: str) -> str:
        return folder.joinpath(f"{part}.lua").read_text(encoding="utf-8")

    parts = []
    if name.startswith("result_") or name in ("fetch", "settle", "admin"):
        parts.append(read("records"))
    if name in ("result_update", "settle", "admin"):
        parts.append(read("record_merge"))
    if name in ("result_create", "publish"):
        parts.append(read("record_create"))
    parts.append(read(name))
    if not name.startswith("result_"):
        parts.insert(0, used_helpers(read("common"), "\n".join(parts)))
    return "\n".join(parts)


_TOP_LOCAL = re.compile(r"local (?:function )?(\w+)")
_COMMENT = re.compile(r"--[^\n]*")
_WORD = re.compile(r"\w+")


def used_helpers(common: str, body: str) -> str:
    """``common``'s opening lines (up to its first function) and, in their order, those
    of its later top-level locals (functions, constants) that ``body`` uses, directly or
    through another one.

    A script's text runs in full on every call: each helper function it defines is a
    closure made again each time, and the publish calls four of the eleven."""
    head: list[str] = []
    blocks: list[tuple[str, list[str]]] = []  # (name, lines), comments above included
    for line in common.splitlines(keepends=True):
        match = _TOP_LOCAL.match(line)
        if match and (blocks or line.startswith("local function ")):
            lines = blocks[-1][1] if blocks else head
            comments: list[str] = []
            while lines and lines[-1].startswith("--"):
                comments.insert(0, lines.pop())
            blocks.append((match.group(1), [*comments, line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            head.append(line)
    texts = {name: "".join(lines) for name, lines in blocks}
    used: set[str] = set()
    pending = [body]
    while pending:
        # The names the code uses (a name in a comment is not a use).
        names = set(_WORD.findall(_COMMENT.sub("", pending.pop())))
        for helper in names.intersection(texts).difference(used):
            used.add(helper)
            pending.append(texts[helper])
    return "".join(head) + "".join(texts[helper] for helper, _ in blocks if helper in used)
