"""Certificates and TLS servers for the TLS tests: a private CA made with ``openssl``, and
``redis-server`` / ``nats-server`` processes of the test's own on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.nats_helpers import NATS_SERVER
from tests.integration.redis_helpers import free_port, wait_until


@dataclass(frozen=True)
class Pki:
    """A private CA, a server certificate for 127.0.0.1/localhost, a client certificate,
    a second CA that signed neither, and a server certificate of the first CA for another
    name (``elsewhere.example``)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    misnamed_cert: Path
    misnamed_key: Path


def _openssl(args: Sequence[str], cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(name: str, cn: str, cwd: Path) -> None:
    _openssl(
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        ],
        cwd,
    )


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
        ],
        cwd,
    )


def _sign(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        [
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        ],
        cwd,
    )


def make_pki(directory: Path) -> Pki:
    """Generate the test PKI in ``directory`` (with the ``openssl`` command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    _key_and_csr("server", "localhost", directory)
    _sign(
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        directory,
    )
    _key_and_csr("misnamed", "elsewhere.example", directory)
    _sign(
        "misnamed",
        "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
        directory,
    )
    _key_and_csr("client", "taskflow-client", directory)
    _sign("client", "extendedKeyUsage=clientAuth\n", directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
        misnamed_cert=directory / "misnamed.pem",
        misnamed_key=directory / "misnamed.key",
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def _running(command: list[str], port: int, what: str) -> Iterator[int]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or _listening(port), 10, what)
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {command}")
        yield port
    finally:
        _stop(proc)


@contextmanager
def tls_redis(
    pki: Pki,
    *,
    client_certs: bool = False,
    password: str | None = None,
    misnamed: bool = False,
) -> Iterator[int]:
    """A redis-server speaking only TLS on a free port; yields the port.

    ``misnamed``: it presents the certificate for ``elsewhere.example``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-cert-file",
        str(pki.misnamed_cert if misnamed else pki.server_cert),
        "--tls-key-file",
        str(pki.misnamed_key if misnamed else pki.server_key),
        "--tls-ca-cert-file",
        str(pki.ca),
        "--tls-auth-clients",
        "yes" if client_certs else "no",
    ]
    if password is not None:
        command += ["--requirepass", password]
    with _running(command, port, f"redis-server (TLS) on port {port}") as ready:
        yield ready


@contextmanager
def tls_nats(
    pki: Pki,
    store_dir: Path,
    *,
    client_certs: bool = False,
    config: str | None = None,
) -> Iterator[int]:
    """A nats-server with JetStream requiring TLS on a free port; yields the port.

    ``config``: extra server configuration (an ``authorization`` block).
    """
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"{NATS_SERVER} is not installed")
    port = free_port()
    lines = [
        f"listen: 127.0.0.1:{port}",
        f"jetstream {{ store_dir: {_quoted(store_dir)} }}",
        "tls {",
        f"  cert_file: {_quoted(pki.server_cert)}",
        f"  key_file: {_quoted(pki.server_key)}",
    ]
    if client_certs:
        lines += [f"  ca_file: {_quoted(pki.ca)}", "  verify: true"]
    lines.append("}")
    if config:
        lines.append(config)
    conf = store_dir / "server.conf"
    conf.write_text("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    with _running([NATS_SERVER, "-c", str(conf)], port, f"nats-server (TLS) on {port}") as ready:
        yield ready


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
