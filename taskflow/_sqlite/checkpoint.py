"""Checkpoints of an SQLite file's write-ahead log, on a thread of their own.

In WAL mode a commit appends pages to ``<file>-wal``; a checkpoint copies them into the
file. Left to SQLite, the commit that takes the log past 1,000 pages runs the checkpoint
itself, before it returns: it copies the pages and waits for two ``fsync`` calls (of the log,
then of the file), several milliseconds on most disks. That commit may be a producer's
``delay()`` or a worker's fetch, which then waits for the disk.

A :class:`Checkpointer` runs them on its own thread and SQLite connection instead. Every
commit of the process counts towards the next one (about a checkpoint's worth of pages:
:data:`CHECKPOINT_EVERY` commits, a batch counting more for its rows); the thread then
runs a ``PASSIVE`` checkpoint, which never blocks writers or readers, while the commits go
on. The log is synced exactly as before (``synchronous = NORMAL``: before each
checkpoint), so what a crash or a power cut can lose does not change.

SQLite's own checkpoint stays behind it, at :data:`BACKSTOP` pages: it runs on the
committing thread if the log grows that far anyway (pages of large messages, another
process writing much more, or the background checkpoints never finding the log copied
to its end while commits keep coming: only a checkpoint with no commit running at the
same time lets the next commit start the log again from the beginning).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["BACKSTOP", "CHECKPOINT_EVERY", "ROW_WEIGHT", "Checkpointer"]

log = logging.getLogger("taskflow.sqlite")

CHECKPOINT_EVERY = 256
"""Commits between background checkpoints (a one-message commit writes 3-4 pages)."""
ROW_WEIGHT = 1 / 16
"""What a changed row adds to the count, beyond its commit's 1 (a batch of 1,000 messages
counts as 63 commits)."""
BACKSTOP = 4000
"""``wal_autocheckpoint`` of the connections: pages in the log past which the committing
thread checkpoints (SQLite's default is 1,000)."""


class Checkpointer:
    """The checkpoint thread of one process's connection to one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.runs = 0
        """Checkpoints run (each a ``PRAGMA wal_checkpoint(PASSIVE)``)."""
        self._count = 0.0
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="taskflow-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self, rows: int) -> None:
        """Count a commit that changed ``rows`` rows; wake the thread once enough did.
        Called under the connection's lock (one caller at a time)."""
        self._count += 1.0 + rows * ROW_WEIGHT
        if self._count >= CHECKPOINT_EVERY:
            self._count = 0.0
            self._wanted.set()

    def stop(self) -> None:
        """End the thread (after the checkpoint it may be running). Idempotent."""
        self._stopping = True
        self._wanted.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self.path, isolation_level=None, check_same_thread=False
                        )
                    # PASSIVE: copies what it can without waiting for any lock; a busy
                    # file (another process checkpointing) is simply left for next time.
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()
