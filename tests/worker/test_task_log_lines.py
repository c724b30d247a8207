"""One compact INFO line per task state change, naming the task and id, never payloads."""

from __future__ import annotations

import logging

import pytest

from taskflow import App, FakeClock


def test_each_state_change_logs_one_line_without_arguments_or_results(
    fake_app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    @fake_app.task(retries=1, retry_backoff=1.0, retry_jitter=False)
    def charge(card_number: str) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("gateway down")
        return f"receipt-for-{card_number}"

    result = charge.delay("4111-SECRET-1111")
    worker = fake_app.worker(concurrency=1)
    with caplog.at_level(logging.INFO, logger="taskflow.worker"):
        worker.run_until_idle()
        clock.advance(1.0)
        worker.run_until_idle()
    assert result.get(timeout=1) == "receipt-for-4111-SECRET-1111"

    lines = [r.getMessage() for r in caplog.records if result.id in r.getMessage()]
    assert len(lines) == 2
    # How long the attempt ran and when it is retried are told apart.
    assert lines[0].endswith(
        "failed after 0.0ms (attempt 1): ConnectionError: gateway down; retry 1/1 in 1.00s"
    )
    assert "succeeded" in lines[1] and "(attempt 2)" in lines[1]
    assert all(charge.name in line and "\n" not in line for line in lines)
    assert not any("SECRET" in r.getMessage() for r in caplog.records)
