"""Waking the fetchers of other processes on one SQLite file.

A worker whose fetch found nothing waits. A commit of its own process wakes it through the
in-process :class:`~taskflow._sqlite.connection.Doorbell`; a commit of another process it
would only notice at its next ``PRAGMA data_version`` check. So that a message published by
another process is picked up at once, without checking often (each check wakes the idle
worker), every process that waits for messages listens on a Unix datagram socket in a
directory beside the file (``<file>-wake/``), and a process that published messages sends
one byte to each socket there after its commit.

Nothing depends on the byte arriving: the ``data_version`` checks go on behind it, so a
lost wake-up costs latency, never a message. A socket whose process is gone (killed, so it
could not remove it) is removed by the next sender, which finds nobody listening. Where
the directory cannot be made, or the socket's path is too long for a Unix socket (about
100 bytes), or the platform has no Unix sockets, the process does not listen and its
fetches rely on the checks alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable

__all__ = ["Waker"]

log = logging.getLogger("taskflow.sqlite")

_MAX_PATH = 100  # a Unix socket's path is at most 107 bytes on Linux, 103 on macOS
_RELIST = 1.0  # seconds: list the directory again at least this often (coarse mtimes)
# Seconds a listing is used without looking at the directory again: a process that starts
# listening meanwhile is not woken by the sends of those few milliseconds, and finds their
# messages by its data_version checks (1 ms, 2 ms, ... after its wait began) instead.
_FRESH = 0.002


class Waker:
    """The wake-up sockets of one file, for one process (see the module docs)."""

    def __init__(self, path: str) -> None:
        self.directory = os.path.abspath(path) + "-wake"
        self._lock = threading.Lock()
        # Listening: our socket, its path, the loop it is read on.
        self._sock: socket.socket | None = None
        self._own: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed = False
        # Sending: one unbound socket, and the peers as last listed.
        self._sender: socket.socket | None = None
        # (the directory's mtime, when it was looked at, when it was listed, the peers)
        self._listed: tuple[int, float, float, tuple[str, ...]] = (-2, -1.0, -1.0, ())
        self._pid = os.getpid()

    # -- listening -------------------------------------------------------------------
    def listen(self, on_wake: Callable[[set[bytes]], None]) -> bool:
        """Listen on the running loop, calling ``on_wake(topics)`` when other processes
        sent (the topics of :meth:`notify` received since the last call); True if this
        process listens (now or since an earlier call, on a loop that still runs)."""
        if self._sock is not None and self._pid == os.getpid():
            loop = self._loop
            if loop is not None and loop.is_running():
                return True
        if self._failed or not hasattr(socket, "AF_UNIX"):
            return False
        loop = asyncio.get_running_loop()
        with self._lock:
            self._forget_parent()
            sock, own = self._sock, self._own
            if sock is not None and self._loop is loop:
                return True
            try:
                if sock is None:
                    sock, own = self._bind()
                # A socket read by a loop that stopped is read by this one from now on.
                loop.add_reader(sock.fileno(), self._read, sock, on_wake)
            except (OSError, NotImplementedError) as exc:  # no add_reader: Windows' loop
                if sock is not None and self._sock is None:
                    sock.close()
                    if own is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(own)
                self._failed = True
                log.debug("not listening for wake-ups in %s: %s", self.directory, exc)
                return False
            self._sock, self._own, self._loop = sock, own, loop
        return True

    def _bind(self) -> tuple[socket.socket, str]:
        os.makedirs(self.directory, exist_ok=True)
        own = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}")
        if len(os.fsencode(own)) > _MAX_PATH:
            raise OSError(f"the socket path {own!r} is too long for a Unix socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(own)
        except OSError:
            sock.close()
            raise
        return sock, own

    @staticmethod
    def _read(sock: socket.socket, on_wake: Callable[[set[bytes]], None]) -> None:
        topics: set[bytes] = set()
        while True:
            try:
                topics.add(sock.recv(8))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed meanwhile
                return
        if topics:
            on_wake(topics)

    def _forget_parent(self) -> None:
        """In a forked child: the socket's file is the parent's (it stays); our copies of
        the descriptors are closed."""
        if self._pid != os.getpid():
            for sock in (self._sock, self._sender):
                if sock is not None:
                    sock.close()
            self._sock = self._own = self._loop = self._sender = None
            self._listed = (-2, -1.0, -1.0, ())
            self._pid = os.getpid()

    # -- sending ---------------------------------------------------------------------
    def notify(self, topic: bytes) -> None:
        """Wake every other process listening on this file for ``topic`` (after a commit
        that made messages ready, or added a control command). Never raises; costs a
        ``stat`` when nobody listens."""
        try:
            peers = self._peers()
            if not peers:
                return
            sender = self._sender
            if sender is None or self._pid != os.getpid():
                with self._lock:
                    self._forget_parent()
                    if self._sender is None:
                        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                        self._sender.setblocking(False)
                    sender = self._sender
            own = self._own
            for peer in peers:
                if peer == own:
                    continue
                try:
                    sender.sendto(topic, peer)
                except BlockingIOError:
                    pass  # its queue is full: it has wake-ups to read already
                except ConnectionRefusedError:  # its process is gone: nobody will
                    _remove_socket(peer)
                except OSError:
                    pass  # gone meanwhile; the next listing drops it
        except OSError as exc:
            log.debug("wake-up of other processes on %s failed: %s", self.directory, exc)

    def _peers(self) -> tuple[str, ...]:
        now = time.monotonic()
        seen, at, listed, peers = self._listed
        if now - at < _FRESH:
            return peers
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime == -1:
            peers = ()
        elif mtime != seen or now - listed > _RELIST:
            directory = self.directory
            peers = tuple(os.path.join(directory, name) for name in os.listdir(directory))
            listed = now
        self._listed = (mtime, now, listed, peers)
        return peers

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and remove our socket. Idempotent, from any thread."""
        with self._lock:
            sock, own, loop = self._sock, self._own, self._loop
            sender = self._sender
            self._sock = self._own = self._loop = self._sender = None
            if self._pid != os.getpid():
                return  # the parent's, as inherited by fork: not ours to remove
        if sock is not None:
            if loop is None or loop.is_closed():
                sock.close()
            elif loop is asyncio._get_running_loop() or not loop.is_running():  # noqa: SLF001
                _unlisten(loop, sock)
            else:  # the loop's own thread takes it off its selector, then closes it
                loop.call_soon_threadsafe(_unlisten, loop, sock)
        if own is not None:
            with contextlib.suppress(OSError):
                os.unlink(own)
        if sender is not None:
            sender.close()


def _remove_socket(path: str) -> None:
    """Remove ``path`` if it is a socket (nothing else in the directory is ours to remove)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _unlisten(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    with contextlib.suppress(Exception):  # a loop closing meanwhile takes it off itself
        loop.remove_reader(sock.fileno())
    sock.close()
