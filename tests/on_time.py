"""The check shared by the tests of sub-second delays: are messages due in a fraction of a
second delivered (or run) on time?

The target is 50 ms late at most. One stall of the machine (a collection, a disk flush in
the server, another process taking both cores) delays every message due while it lasts, and
with one due every 10 or 20 ms that is several at once, so the check is on what one stall
cannot move: the median within half the target, nine in ten within the target, and none a
whole wait late. A broker that waits for a tick of its own (a 100 ms timer, a one-second
poll) instead of a timer for the message fails the first two; a missed wake-up fails the
last.
"""

from __future__ import annotations

ON_TIME = 0.05
"""Seconds late that nine in ten messages stay within."""
NEVER_LATER = 0.2
"""Seconds late that no message reaches: a missed wake-up is a whole wait late."""
EARLY = 0.005
"""Seconds early a message may seem to come: clocks read on two threads."""


def assert_on_time(late: list[float], samples: int) -> None:
    """``late``: seconds each of ``samples`` messages came after it was due."""
    ordered = sorted(late)
    assert len(ordered) == samples
    worst = [round(x, 3) for x in ordered[-5:]]
    assert ordered[0] > -EARLY, f"delivered {-ordered[0]:.3f}s before it was due"
    median = ordered[len(ordered) // 2]
    assert median <= ON_TIME / 2, f"half over {median:.3f}s late; the latest: {worst}"
    tenth = ordered[len(ordered) * 9 // 10]
    assert tenth <= ON_TIME, f"one in ten over {tenth:.3f}s late; the latest: {worst}"
    assert ordered[-1] <= NEVER_LATER, f"up to {ordered[-1]:.3f}s late: {worst}"
