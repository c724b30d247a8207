"""ParamSpec typing end to end: mypy --strict checks task call sites and result types.

``delay``/``adelay`` and ``with_options(...).delay`` are checked against the task's
signature; ``apply_async`` takes its arguments as a plain tuple and dict, which are not."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from tests.typed.helpers import run_strict_mypy

ROOT = Path(__file__).resolve().parents[2]

# Each line that must produce mypy output ends with "# <- name"; EXPECTED says what.
SAMPLE = textwrap.dedent(
    """
    from taskflow import App, TaskContext
    from taskflow.results.handle import AsyncResult

    app = App("typed")


    @app.task
    def add(x: int, y: int) -> int:
        return x + y


    @app.task(queue="io", retries=2)
    async def fetch(url: str, *, attempts: int = 1) -> bytes:
        return url.encode() * attempts


    @app.task(bind=True)
    def resize(ctx: TaskContext, width: int) -> str:
        return f"{ctx.id}:{width}"


    add.delay("one", 2)  # <- str_for_int
    add.delay(1, 2, 3)  # <- too_many
    fetch.delay("u", attempts="3")  # <- bad_keyword
    total: int = add.delay(1, 2).get(timeout=5)
    reveal_type(add.delay(1, 2).get())  # <- sync_result
    reveal_type(fetch.delay("u", attempts=2).get())  # <- async_result
    reveal_type(add(1, 2))  # <- inline_call
    reveal_type(resize.delay(640).get())  # <- bound_result
    resize.delay(TaskContext(id="x", name="n", queue="q"), 640)  # <- context_passed
    add.with_options(priority=9).delay("one", 2)  # <- sender_str_for_int
    add.with_options(prioirty=9)  # <- sender_unknown_option
    add.with_options(countdown="soon")  # <- sender_option_type
    reveal_type(add.with_options(queue="q", retries=1).delay(1, 2).get())  # <- sender_result
    add.apply_async(("one", 2), priority=9)  # arguments in a tuple are not checked


    async def producer() -> AsyncResult[int]:
        handle = await add.adelay(1, 2)
        await add.with_options(priority=1).adelay(1, y="2")  # <- sender_async_keyword
        reveal_type(await handle.aget())  # <- aget_result
        return handle
    """
).lstrip()

EXPECTED: dict[str, list[tuple[str, str]]] = {
    "str_for_int": [
        ("error", r'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"')
    ],
    "too_many": [("error", r'Too many arguments for "delay" of "Task"')],
    "bad_keyword": [
        (
            "error",
            r'Argument "attempts" to "delay" of "Task" has incompatible type "str"; '
            r'expected "int"',
        )
    ],
    "sync_result": [("note", r'Revealed type is "(builtins\.)?int"$')],
    "async_result": [("note", r'Revealed type is "(builtins\.)?bytes"$')],
    "inline_call": [("note", r'Revealed type is "(builtins\.)?int"$')],
    "bound_result": [("note", r'Revealed type is "(builtins\.)?str"$')],
    "context_passed": [
        ("error", r'Too many arguments for "delay" of "Task"'),
        (
            "error",
            r'Argument 1 to "delay" of "Task" has incompatible type "TaskContext"; '
            r'expected "int"',
        ),
    ],
    "aget_result": [("note", r'Revealed type is "(builtins\.)?int"$')],
    "sender_str_for_int": [
        (
            "error",
            r'Argument 1 to "delay" of "TaskSender" has incompatible type "str"; expected "int"',
        )
    ],
    "sender_unknown_option": [
        ("error", r'Unexpected keyword argument "prioirty" for "with_options" of "Task"'),
        ("note", r'"with_options" defined in "taskflow\.task"'),
    ],
    "sender_option_type": [
        (
            "error",
            r'Argument "countdown" to "with_options" of "Task" has incompatible type "str"; '
            r'expected "float"',
        )
    ],
    "sender_result": [("note", r'Revealed type is "(builtins\.)?int"$')],
    "sender_async_keyword": [
        (
            "error",
            r'Argument "y" to "adelay" of "TaskSender" has incompatible type "str"; '
            r'expected "int"',
        )
    ],
}


def run_mypy(tmp_path: Path) -> str:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MYPYPATH": str(ROOT)}
    proc = run_strict_mypy(str(sample), tmp_path, tmp_path / "cache", env)
    assert not proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.timeout(300)
def test_mypy_flags_bad_call_sites_and_infers_result_types_exactly(tmp_path: Path) -> None:
    markers = {
        index: line.rsplit("# <- ", 1)[1]
        for index, line in enumerate(SAMPLE.splitlines(), 1)
        if "# <- " in line
    }
    assert sorted(markers.values()) == sorted(EXPECTED)
    output = run_mypy(tmp_path)
    found: dict[str, list[tuple[str, str]]] = {}
    for line in output.splitlines():
        match = re.match(r"^sample\.py:(\d+): (error|note): (.*)$", line)
        assert match, f"unexpected mypy output: {line!r}\n{output}"
        number = int(match[1])
        assert number in markers, f"unexpected finding on line {number}: {line}\n{output}"
        found.setdefault(markers[number], []).append((match[2], match[3]))
    assert sorted(found) == sorted(EXPECTED), output
    for name, wanted in EXPECTED.items():
        got = found[name]
        assert len(got) == len(wanted), (name, got)
        for (kind, text), (want_kind, pattern) in zip(got, wanted, strict=True):
            assert kind == want_kind and re.search(pattern, text), (name, kind, text, pattern)
