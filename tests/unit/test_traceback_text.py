"""The traceback text stored with a failure (``error_info``): what
``traceback.format_exception`` writes, causes and contexts included, without the column
markers of Python 3.11 (finding them cost a failing worker a third of its loop)."""

from __future__ import annotations

import traceback

import pytest

from taskflow.message import MAX_ERROR_MESSAGE, MAX_TRACEBACK, error_info, format_traceback


def _markers_removed(text: str) -> str:
    """The standard library's text without its lines of ``^`` and ``~`` markers."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or set(line.strip()) - set("^~")]
    return "".join(kept)


def _lookup(values: dict[str, int], key: str) -> int:
    return values[key] + 1  # the failing part is not the whole line: markers under it


def _wrapped() -> None:
    try:
        _lookup({}, "k")
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


def _while_handling() -> None:
    try:
        _wrapped()
    except RuntimeError:
        _lookup({"k": "not a number"}, "k")  # type: ignore[dict-item]


def _suppressed() -> None:
    try:
        _lookup({}, "k")
    except KeyError:
        raise ValueError("no such key") from None


def _noted() -> None:
    try:
        _lookup({}, "k")
    except KeyError as exc:
        exc.add_note("while looking up the task's settings")
        raise


def _caught(call: object) -> BaseException:
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("it did not raise")


@pytest.mark.parametrize(
    "call", [lambda: _lookup({}, "k"), _wrapped, _while_handling, _suppressed, _noted]
)
def test_the_text_is_the_standard_one_without_the_column_markers(call: object) -> None:
    exc = _caught(call)
    standard = "".join(traceback.format_exception(exc))
    assert "^" in standard  # the markers are there to leave out
    ours = format_traceback(exc)
    assert ours == _markers_removed(standard)
    assert "^" not in ours
    assert ("return values[key] + 1" in ours) is (call is not _suppressed)
    assert ("while looking up the task's settings" in ours) is (call is _noted)


def test_causes_and_contexts_come_first_with_their_notes() -> None:
    text = format_traceback(_caught(_while_handling))
    first = text.index("KeyError: 'k'")
    cause = text.index("The above exception was the direct cause of the following exception:")
    second = text.index("RuntimeError: lookup failed")
    context = text.index("During handling of the above exception, another exception occurred:")
    last = text.index("TypeError:")
    assert first < cause < second < context < last
    assert "KeyError" not in format_traceback(_caught(_suppressed))


def test_a_cycle_of_contexts_ends() -> None:
    first, second = ValueError("first"), ValueError("second")
    first.__context__, second.__context__ = second, first
    text = format_traceback(first)
    assert text.count("ValueError: first") == 1
    assert text.count("ValueError: second") == 1


def test_an_exception_group_is_formatted_by_the_standard_library() -> None:
    group = _caught(
        lambda: (_ for _ in ()).throw(ExceptionGroup("two", [KeyError("a"), OSError("b")]))
    )
    assert format_traceback(group) == "".join(traceback.format_exception(group))


def test_a_failure_s_record_carries_the_text() -> None:
    exc = _caught(_wrapped)
    info = error_info(exc)
    assert info["type"] == "RuntimeError"
    assert info["message"] == "lookup failed"
    assert info["traceback"] == format_traceback(exc)


def _loud() -> None:
    raise ValueError("x" * (MAX_TRACEBACK + 10_000))


def test_a_long_message_and_traceback_are_cut_keeping_their_start_and_end() -> None:
    exc = _caught(_loud)
    full = format_traceback(exc)
    info = error_info(exc)

    cut = MAX_TRACEBACK + 10_000 - MAX_ERROR_MESSAGE
    assert info["message"] == "x" * MAX_ERROR_MESSAGE + f" [... {cut:,} more characters]"
    text = info["traceback"]
    head, tail = MAX_TRACEBACK // 8, MAX_TRACEBACK - MAX_TRACEBACK // 8
    assert text.startswith(full[:head]) and "in _loud\n" in text[:head]  # the frames
    assert text.endswith(full[-tail:])  # the end, where the error is named
    assert f"\n[... {len(full) - MAX_TRACEBACK:,} characters left out ...]\n" in text
    assert len(text) < MAX_TRACEBACK + 100
