"""A TCP proxy in front of a real server that can be made to stop answering.

``freeze()`` stops relaying in both directions while every connection stays open: to the
client it looks like a server that hangs (or a network that drops every packet) rather than
one that is gone. The proxy reads nothing while frozen, so what the client writes fills the
socket buffers as it would against a stopped server.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

from taskflow import App, Task


class FrozenProxy:
    """Relays 127.0.0.1:``port`` to ``target`` until :meth:`freeze`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        accept = threading.Thread(target=self._accept, name="frozen-proxy-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def freeze(self) -> None:
        """Stop relaying; the connections stay open."""
        self._thawed.clear()

    def close(self) -> None:
        """Close every connection and the listener, and end the threads."""
        self._closed.set()
        self._thawed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            relay = threading.Thread(
                target=self._relay, args=(client, server), name="frozen-proxy", daemon=True
            )
            relay.start()
            self._threads.append(relay)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        while not self._closed.is_set():
            if not self._thawed.is_set():
                self._thawed.wait(0.05)  # frozen: leave what arrives unread (no spinning)
                continue
            try:
                readable, _, _ = select.select(list(peers), [], [], 0.05)
            except (OSError, ValueError):
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
                except OSError:
                    return


@contextlib.contextmanager
def frozen_proxy(target: tuple[str, int]) -> Iterator[FrozenProxy]:
    """A :class:`FrozenProxy` closed on exit."""
    proxy = FrozenProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.contextmanager
def app_through(name: str, url: str) -> Iterator[App]:
    """An app named ``name`` on ``url`` (a server behind a proxy); closed on exit."""
    app = App(name, broker=url)
    try:
        yield app
    finally:
        app.close()


def noop_of(app: App) -> Task[[], None]:
    """A task of ``app`` that does nothing (no worker runs it: what it sends stays)."""

    @app.task(name="hung.noop")
    def noop() -> None: ...

    return noop
