"""The text of the bundled Redis scripts: each carries the shared helpers it calls, and
only those (each helper is a closure made again on every call of the script)."""

from __future__ import annotations

import re

import pytest

from taskflow._redis.scripts import BROKER_SCRIPTS, RESULT_SCRIPTS, load_script, used_helpers

# Lua's own functions the scripts call, and keywords a "name(" pattern can catch.
_LUA_BUILTINS = {"assert", "error", "ipairs", "next", "pairs", "pcall", "select", "type"}
_LUA_BUILTINS |= {"tonumber", "tostring", "unpack"}
_LUA_KEYWORDS = {"and", "elseif", "function", "if", "not", "or", "return", "until", "while"}
_LUA_NAMES = frozenset(_LUA_BUILTINS | _LUA_KEYWORDS)
_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _code(text: str) -> str:
    return _STRING.sub("''", _COMMENT.sub("", text))


@pytest.mark.parametrize("name", BROKER_SCRIPTS + RESULT_SCRIPTS)
def test_every_function_a_script_calls_is_defined_in_its_text(name: str) -> None:
    code = _code(load_script(name))
    called = set(re.findall(r"(?<![\w.:])([A-Za-z_]\w*)\s*\(", code))
    defined = set(re.findall(r"\bfunction\s+(\w+)", code))
    defined |= set(re.findall(r"\blocal\s+(\w+)\s*=\s*function\b", code))
    assert called - defined - _LUA_NAMES == set()


def test_a_script_leaves_out_the_helpers_it_does_not_use() -> None:
    publish = load_script("publish")
    assert "local function wake(" in publish  # it pushes wake-up tokens
    for unused in ("utf8_ok", "framing_error", "bury", "make_ready"):
        assert f"local function {unused}(" not in publish
    fetch = load_script("fetch")
    for used in ("utf8_ok", "framing_error", "bury", "make_ready", "ready_score"):
        assert f"local function {used}(" in fetch


def test_helpers_come_with_what_they_use_and_the_comments_above_them() -> None:
    used = (
        "local P = ARGV[1]\n"
        "-- the key\n"
        "local function key(x)\n  return P .. x\nend\n"
        "local STEP = 2\n"
        "-- scaled\n"
        "local function scaled(x)\n  return key(x) .. STEP\nend\n"
    )
    unused = "-- never called\nlocal function unused()\n  return 0\nend\n"
    # The opening line, key (through scaled), STEP and the comments come along; a name in
    # the body's comment is not a call.
    assert used_helpers(used + unused, "return scaled('a') -- not unused()") == used
