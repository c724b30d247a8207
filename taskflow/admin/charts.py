"""The overview's throughput chart: inline SVG drawn on the server (no script, no library)."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

__all__ = ["throughput_svg"]

WIDTH, HEIGHT, PAD = 600, 160, 28


def throughput_svg(buckets: list[tuple[float, int, int]]) -> Markup:
    """Bars of tasks finished per minute (succeeded and failed stacked), with a title and
    a description that say the same in words for screen readers."""
    peak = max((ok + bad for _, ok, bad in buckets), default=0)
    scale = max(peak, 1)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = inner_w / max(len(buckets), 1)
    total_ok = sum(ok for _, ok, _ in buckets)
    total_bad = sum(bad for _, _, bad in buckets)
    desc = (
        f"Last {len(buckets)} minutes: {total_ok} succeeded, {total_bad} failed; "
        f"busiest minute {peak} tasks."
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc">',
        '<title id="chart-title">Tasks finished per minute, last hour</title>',
        f'<desc id="chart-desc">{escape(desc)}</desc>',
        f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" '
        f'y2="{HEIGHT - PAD}"/>',
        f'<text class="label" x="{PAD}" y="{PAD - 8}">{peak}/min</text>',
    ]
    for i, (_, ok, bad) in enumerate(buckets):
        x = PAD + i * bar_w
        ok_h = inner_h * ok / scale
        bad_h = inner_h * bad / scale
        base = HEIGHT - PAD
        if ok:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{ok_h:.1f}"/>'
            )
        if bad:
            parts.append(
                f'<rect class="bad" x="{x:.1f}" y="{base - ok_h - bad_h:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{bad_h:.1f}"/>'
            )
    if buckets:
        first = datetime.fromtimestamp(buckets[0][0], tz=UTC).strftime("%H:%M")
        last = datetime.fromtimestamp(buckets[-1][0] + 60, tz=UTC).strftime("%H:%M")
        parts.append(f'<text class="label" x="{PAD}" y="{HEIGHT - 8}">{first} UTC</text>')
        parts.append(
            f'<text class="label" x="{WIDTH - PAD}" y="{HEIGHT - 8}" '
            f'text-anchor="end">{last}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
