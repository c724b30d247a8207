"""The throughput chart: per-minute counts from counter samples, drawn as accessible SVG."""

from __future__ import annotations

from taskflow.admin.charts import throughput_svg
from taskflow.admin.views import Throughput

NOW = 1_800_000_000.0


def test_samples_become_tasks_finished_per_minute() -> None:
    history = Throughput(spacing=10.0)
    history.add(NOW - 150, {"succeeded": 100, "failed": 5})
    history.add(NOW - 145, {"succeeded": 999, "failed": 99})  # too close: not kept
    history.add(NOW - 90, {"succeeded": 130, "failed": 6})
    history.add(NOW - 30, {"succeeded": 4, "failed": 0})  # a worker restarted: from zero
    buckets = history.minutes(NOW, count=3)
    assert [(ok, bad) for _, ok, bad in buckets] == [(0, 0), (30, 1), (4, 0)]
    assert buckets[-1][0] == NOW - 60


def test_samples_older_than_the_window_are_dropped() -> None:
    history = Throughput(window=3600.0)
    history.add(NOW - 4000, {"succeeded": 1})
    history.add(NOW - 100, {"succeeded": 50})
    history.add(NOW - 40, {"succeeded": 60})
    assert sum(ok for _, ok, _ in history.minutes(NOW)) == 10


def test_the_chart_says_in_words_what_it_draws() -> None:
    svg = str(throughput_svg([(NOW - 120, 3, 1), (NOW - 60, 7, 0)]))
    assert svg.startswith("<svg") and 'role="img"' in svg
    assert '<desc id="chart-desc">Last 2 minutes: 10 succeeded, 1 failed; busiest minute 7' in svg
    assert svg.count('class="ok"') == 2 and svg.count('class="bad"') == 1
    assert "<script" not in svg
