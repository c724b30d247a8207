"""SIGTERM/SIGINT for a process in the foreground: a stop policy and a self-pipe.

Signal handlers only record the signal and write a byte to a self-pipe; everything else
(deciding, logging, calling ``stop``) happens in the main loop, which selects on that pipe.
A handler never takes a lock or blocks, so a signal can arrive at any moment without
deadlocking the thread it interrupts. The stop policy, shared by a worker process, a beat
and the ``-P`` supervisor: the first SIGTERM or SIGINT stops gracefully; a SIGINT after that
stops now; anything else while stopping is ignored.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

__all__ = ["GRACEFUL", "HARD", "StopControl", "StopPolicy", "signal_name"]

GRACEFUL = "graceful"
HARD = "hard"


class StopPolicy:
    """Turns a stream of SIGTERM/SIGINT into at most two actions: graceful, then hard."""

    def __init__(self) -> None:
        self.state = "running"  # running -> graceful -> hard

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self.state != "running"

    def on_signal(self, signum: int) -> str | None:
        """The action for this signal now (``"graceful"``, ``"hard"``) or None to ignore it."""
        if self.state == "running":
            self.state = GRACEFUL
            return GRACEFUL
        if self.state == GRACEFUL and signum == signal.SIGINT:
            self.state = HARD
            return HARD
        return None

    def request(self, action: str) -> str | None:
        """Ask for ``action`` without a signal (a vanished supervisor, a crashed worker)."""
        if action == GRACEFUL and self.state == "running":
            self.state = GRACEFUL
            return GRACEFUL
        if action == HARD and self.state != HARD:
            self.state = HARD
            return HARD
        return None


class StopControl:
    """SIGTERM/SIGINT handlers plus a self-pipe the main loop waits on.

    Use as a context manager around the whole run: handlers are installed on entry (so a
    signal during a slow app import is not lost) and the previous ones restored on exit.
    Outside the main thread Python allows no signal handlers: none are installed, and the
    run ends only through its own crash or a stop called by the program.
    """

    def __init__(self, extra_wakeups: Sequence[signal.Signals] = ()) -> None:
        self.policy = StopPolicy()
        self._pending: list[int] = []
        self._extra = tuple(extra_wakeups)
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def __enter__(self) -> StopControl:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_stop_signal)
        for signum in self._extra:
            self._previous[signum] = signal.signal(signum, self._on_wakeup_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore_handlers()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def restore_handlers(self) -> None:
        """Put back the handlers from before :meth:`__enter__` (once; ``__exit__`` does too).

        A worker process forked by the supervisor calls it first, to handle signals as a
        freshly started process does.
        """
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)
        self.notify()

    def _on_wakeup_signal(self, signum: int, frame: FrameType | None) -> None:
        self.notify()

    def notify(self) -> None:
        """Wake the main loop; safe from signal handlers and any thread."""
        with contextlib.suppress(OSError):  # a full pipe already means "wake up"
            os.write(self._write_fd, b"\0")

    def wait(self, timeout: float) -> list[tuple[int, str]]:
        """Wait up to ``timeout`` for a wakeup; return ``(signal, action)`` for new signals."""
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._read_fd], [], [], max(0.0, timeout))
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._read_fd, 4096)
        taken = self._pending[:]
        # Only what was copied: a handler may append between the copy and the delete.
        del self._pending[: len(taken)]
        actions = [(signum, self.policy.on_signal(signum)) for signum in taken]
        return [(signum, action) for signum, action in actions if action is not None]


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; a number the platform does not name stays a number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
