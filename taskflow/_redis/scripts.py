"""The bundled Lua scripts of the Redis broker and result store (in ``lua/``).

Every state change of the broker, and every record write of the result store that must be
atomic, is one script. Each script states its arguments and return values in its first
lines. The broker's scripts share helpers (``common.lua``, prepended here); the result
store's (``result_*.lua``) stand alone.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["BROKER_SCRIPTS", "RESULT_SCRIPTS", "load_script"]

BROKER_SCRIPTS = ("publish", "fetch", "settle", "admin")
RESULT_SCRIPTS = ("result_update", "result_value", "result_create", "result_restart")


def load_script(name: str) -> str:
    """The text of a bundled Lua script (broker scripts get the shared helpers first)."""
    folder = resources.files("taskflow._redis").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name.startswith("result_"):
        return text
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + text
