"""Waking the waiting processes on one SQLite file.

A worker whose fetch found nothing waits. A commit of its own process wakes it through the
in-process :class:`~taskflow._sqlite.connection.Doorbell`; a commit of another process it
would only notice at its next ``PRAGMA data_version`` check. So that a message published by
another process is picked up at once, without checking often (each check wakes the idle
worker), every process that waits listens on a Unix datagram socket in a directory beside
the file (``<file>-wake/``), and a process that committed something it waits for sends one
byte, the topic, to each socket there for that topic: a worker's socket is for messages
and control commands, a ``result.get()``'s for finished records.

Nothing depends on the byte arriving: the ``data_version`` checks go on behind it, so a
lost wake-up costs latency, never a message. A socket whose process is gone (killed, so it
could not remove it) is removed by the next sender, which finds nobody listening. Where
the directory cannot be made, or the socket's path is too long for a Unix socket (about
100 bytes), or the platform has no Unix sockets, the process does not listen and its
waits rely on the checks alone.
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


class _Listener:
    """One socket of this process, the loop that reads it, and what it is for."""

    __slots__ = ("loop", "path", "sock")

    def __init__(self, sock: socket.socket, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.path = path
        self.loop = loop


class Waker:
    """The wake-up sockets of one file, for one process (see the module docs).

    A socket's name ends in the topics it is for (``1234-9f3a.mc``: messages and control
    commands; ``.r``: results), so that a sender wakes only the processes that wait for
    its topic."""

    def __init__(self, path: str) -> None:
        self.directory = os.path.abspath(path) + "-wake"
        self._lock = threading.Lock()
        # Listening: a socket per set of topics.
        self._listeners: dict[bytes, _Listener] = {}
        self._failed = False
        # Sending: one unbound socket, and the peers by topic as last listed.
        self._sender: socket.socket | None = None
        # (the directory's mtime, when it was looked at, when it was listed, the peers)
        self._listed: tuple[int, float, float, dict[int, tuple[str, ...]]] = (-2, -1.0, -1.0, {})
        self._pid = os.getpid()

    # -- listening -------------------------------------------------------------------
    def listen(self, topics: bytes, on_wake: Callable[[set[bytes]], None]) -> bool:
        """Listen for ``topics`` (one byte each) on the running loop, calling
        ``on_wake(received)`` when other processes sent (the topics received since the
        last call); True if this process listens for them (now or since an earlier call,
        on a loop that still runs)."""
        listener = self._listeners.get(topics)
        if listener is not None and self._pid == os.getpid() and listener.loop.is_running():
            return True
        if self._failed or not hasattr(socket, "AF_UNIX"):
            return False
        loop = asyncio.get_running_loop()
        with self._lock:
            self._forget_parent()
            listener = self._listeners.get(topics)
            if listener is not None and listener.loop is loop:
                return True
            sock = path = None
            try:
                if listener is None:
                    sock, path = self._bind(topics)
                else:
                    sock, path = listener.sock, listener.path
                # A socket read by a loop that stopped is read by this one from now on.
                loop.add_reader(sock.fileno(), self._read, sock, on_wake)
            except (OSError, NotImplementedError) as exc:  # no add_reader: Windows' loop
                if listener is None and sock is not None:
                    sock.close()
                    if path is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                self._failed = True
                log.debug("not listening for wake-ups in %s: %s", self.directory, exc)
                return False
            self._listeners[topics] = _Listener(sock, path, loop)
        return True

    def _bind(self, topics: bytes) -> tuple[socket.socket, str]:
        os.makedirs(self.directory, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}.{topics.decode('ascii')}"
        path = os.path.join(self.directory, name)
        if len(os.fsencode(path)) > _MAX_PATH:
            raise OSError(f"the socket path {path!r} is too long for a Unix socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        return sock, path

    @staticmethod
    def _read(sock: socket.socket, on_wake: Callable[[set[bytes]], None]) -> None:
        received: set[bytes] = set()
        while True:
            try:
                received.add(sock.recv(8))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed meanwhile
                return
        if received:
            on_wake(received)

    def _forget_parent(self) -> None:
        """In a forked child: the sockets' files are the parent's (they stay); our copies
        of the descriptors are closed."""
        if self._pid != os.getpid():
            for listener in self._listeners.values():
                listener.sock.close()
            if self._sender is not None:
                self._sender.close()
            self._listeners = {}
            self._sender = None
            self._listed = (-2, -1.0, -1.0, {})
            self._pid = os.getpid()

    # -- sending ---------------------------------------------------------------------
    def notify(self, topic: bytes) -> None:
        """Wake every other process listening on this file for ``topic`` (after a commit
        that made messages ready, added a control command, or finished a task's record).
        Never raises; costs a ``stat`` now and then when nobody listens."""
        try:
            peers = self._peers(topic[0])
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
            for peer in peers:
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

    def _peers(self, topic: int) -> tuple[str, ...]:
        """The other processes' sockets for ``topic`` (a byte)."""
        now = time.monotonic()
        seen, at, listed, by_topic = self._listed
        if now - at >= _FRESH:
            try:
                mtime = os.stat(self.directory).st_mtime_ns
            except FileNotFoundError:
                mtime = -1
            if mtime == -1:
                by_topic = {}
            elif mtime != seen or now - listed > _RELIST:
                by_topic = self._list()
                listed = now
            self._listed = (mtime, now, listed, by_topic)
        return by_topic.get(topic, ())

    def _list(self) -> dict[int, tuple[str, ...]]:
        own = {listener.path for listener in self._listeners.values()}
        found: dict[int, list[str]] = {}
        directory = self.directory
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if path in own:
                continue
            _, dot, topics = name.rpartition(".")
            for topic in topics.encode("ascii", "ignore") if dot else b"":
                found.setdefault(topic, []).append(path)
        return {topic: tuple(paths) for topic, paths in found.items()}

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and remove our sockets. Idempotent, from any thread."""
        with self._lock:
            listeners, self._listeners = list(self._listeners.values()), {}
            sender, self._sender = self._sender, None
            if self._pid != os.getpid():
                return  # the parent's, as inherited by fork: not ours to remove
        running = asyncio._get_running_loop()  # noqa: SLF001
        for listener in listeners:
            loop, sock = listener.loop, listener.sock
            if loop.is_closed():
                sock.close()
            elif loop is running or not loop.is_running():
                _unlisten(loop, sock)
            else:  # the loop's own thread takes it off its selector, then closes it
                loop.call_soon_threadsafe(_unlisten, loop, sock)
            with contextlib.suppress(OSError):
                os.unlink(listener.path)
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
