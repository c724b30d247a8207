"""Prometheus text exposition of the OTel metrics, and the ``/metrics`` endpoint.

:func:`render` turns what an OTel metric reader collected into the Prometheus text format
(``# HELP``/``# TYPE`` lines, cumulative histogram buckets). :class:`MetricsEndpoint` serves
a text source over HTTP. A supervised worker (``taskflow worker -P N --metrics-port P``) has
one endpoint for all its processes: each process serves its own text on a loopback port it
writes to a shared directory (:func:`register`), and the supervisor's endpoint merges them
(:func:`gather`), adding the label ``process`` (the process's number, 1 to N, as in the
supervisor's log lines).

An endpoint binds to loopback unless told otherwise, can ask every scrape for a bearer
token (``Authorization: Bearer <token>``, what Prometheus sends with ``authorization:
credentials_file:``), and can serve HTTPS. The loopback endpoints of a supervisor's
processes always ask for one: a random token the supervisor writes into the shared
directory (readable by its user only), so another local user cannot read them.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum

__all__ = [
    "CONTENT_TYPE",
    "TOKEN_FILE",
    "MetricsEndpoint",
    "directory_token",
    "gather",
    "register",
    "render",
]

log = logging.getLogger("taskflow.instrumentation")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FETCH_TIMEOUT = 2.0
# How long a scraper may take to send its request (and, on HTTPS, to shake hands).
REQUEST_TIMEOUT = 10.0
# In a supervisor's directory: the token its processes' loopback endpoints ask for.
TOKEN_FILE = "token"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any] | None, **extra: str) -> str:
    pairs = {**{k: str(v) for k, v in (attributes or {}).items()}, **extra}
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _kind(metric: Metric) -> str:
    if isinstance(metric.data, Histogram):
        return "histogram"
    if isinstance(metric.data, Sum) and metric.data.is_monotonic:
        return "counter"
    return "gauge"


def _histogram_lines(name: str, data: Histogram) -> Iterable[str]:
    for point in data.data_points:
        running = 0
        bounds = [*point.explicit_bounds, float("inf")]
        for bound, count in zip(bounds, point.bucket_counts, strict=True):
            running += count
            yield f"{name}_bucket{_labels(point.attributes, le=_number(bound))} {running}"
        yield f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}"
        yield f"{name}_count{_labels(point.attributes)} {point.count}"


def _family(metric: Metric) -> list[str]:
    name = metric.name
    lines = [
        f"# HELP {name} {_escape(metric.description or name)}",
        f"# TYPE {name} {_kind(metric)}",
    ]
    if isinstance(metric.data, Histogram):
        lines += _histogram_lines(name, metric.data)
    elif isinstance(metric.data, Sum | Gauge):
        lines += [
            f"{name}{_labels(p.attributes)} {_number(p.value)}" for p in metric.data.data_points
        ]
    return lines


def render(data: MetricsData | None) -> str:
    """The Prometheus text of ``data`` (what a metric reader collected)."""
    lines: list[str] = []
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                lines += _family(metric)
    return "".join(f"{line}\n" for line in lines)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="taskflow metrics"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            body = self.server.source().encode()
        except Exception:
            log.exception("could not collect the metrics")
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        source: Callable[[], str],
        token: str | None,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.source = source
        self._expected = f"Bearer {token}".encode() if token else None
        self._tls = tls
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def authorized(self, header: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may read the metrics."""
        if self._expected is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._expected)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        # On the request's own thread: a slow or broken TLS client holds only that thread.
        request.settimeout(REQUEST_TIMEOUT)
        try:
            secured = self._tls.wrap_socket(request, server_side=True)
        except OSError:  # not a TLS client, or gone (ssl.SSLError is an OSError)
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()


class MetricsEndpoint:
    """``GET /metrics`` on ``host:port`` (port 0: any free one), from ``source()``.

    With ``token`` every request must carry ``Authorization: Bearer <token>`` (401
    otherwise); with ``tls`` (a server context holding the certificate) it is HTTPS.
    """

    def __init__(
        self,
        source: Callable[[], str],
        port: int,
        host: str = "127.0.0.1",
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._server = _Server((host, port), source, token, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="taskflow-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def register(directory: str, index: str, port: int) -> None:
    """Note, for the supervisor's :func:`gather`, that process ``index`` serves on ``port``."""
    tmp = Path(directory) / f".{index}.tmp"
    tmp.write_text(str(port))
    os.replace(tmp, Path(directory) / f"{index}.port")


def _fetch(port: int, token: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT) as response:
        text: str = response.read().decode()
        return text


def directory_token(directory: str) -> str:
    """The token of the loopback endpoints registered in a supervisor's ``directory``."""
    return (Path(directory) / TOKEN_FILE).read_text().strip()


def _with_label(sample: str, index: str) -> str:
    name, brace, rest = sample.partition("{")
    if brace:
        return f'{name}{{process="{index}",{rest}'
    name, _, value = sample.partition(" ")
    return f'{name}{{process="{index}"}} {value}'


def gather(directory: str) -> str:
    """The merged text of the processes registered in ``directory`` (a process that does not
    answer is left out)."""
    families: dict[str, list[str]] = {}
    current: list[str] = []
    token = directory_token(directory)
    for path in sorted(Path(directory).glob("*.port")):
        index = path.stem
        try:
            text = _fetch(int(path.read_text()), token)
        except (OSError, ValueError):
            continue
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, [])
                if not current:
                    current.append(line)
            elif line.startswith("# TYPE "):
                if len(current) == 1:
                    current.append(line)
            elif line:
                current.append(_with_label(line, index))
    return "".join(f"{line}\n" for family in families.values() for line in family)
