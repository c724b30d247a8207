"""``taskflow worker --metrics-port``: scrapes of the real endpoint of real processes, which
binds to loopback, asks for a bearer token and can serve HTTPS."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.cli.helpers import ROOT, environment, pids, run, running, taskflow_command, wait_for
from tests.tls.servers import make_pki

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

APPS = Path(__file__).parent / "apps"
SECRET = "s3cr3t-metrics-5d0e"
ENV = {"PYTHONPATH": f"{APPS}:{ROOT}", "LOGAPP_SECRET": SECRET}
TOKEN = "scrape-token-8c1f2a"


def _token_file(tmp_path: Path) -> str:
    path = tmp_path / "metrics-token"
    path.write_text(f"{TOKEN}\n")
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(
    port: int,
    token: str | None = TOKEN,
    *,
    scheme: str = "http",
    context: ssl.SSLContext | None = None,
) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = response.read().decode()
        return text


def _scraped(port: int, wanted: str, **how: object) -> bool:
    try:
        return wanted in _scrape(port, **how)  # type: ignore[arg-type]
    except OSError:
        return False


def _refused(port: int, token: str | None) -> int:
    """The status a scrape with ``token`` (or none) gets; it must not be the metrics."""
    try:
        _scrape(port, token)
    except urllib.error.HTTPError as exc:
        with exc:
            assert exc.headers["WWW-Authenticate"] == 'Bearer realm="taskflow metrics"'
            return exc.code
    raise AssertionError(f"a scrape with {token!r} read the metrics")


def _listening(pid: int, port: int) -> list[str]:
    """The addresses process ``pid`` listens on at ``port``."""
    return [
        conn.laddr.ip
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    ]


def test_a_worker_serves_its_metrics_in_prometheus_text(tmp_path: Path) -> None:
    port = _free_port()
    args = ["worker", "-A", "logapp", "--metrics-port", str(port)]
    args += ["--metrics-token-file", _token_file(tmp_path)]
    done = 'taskflow_tasks_completed_total{task="logapp.work",queue="default",status="succeeded"}'
    with running(args, tmp_path, env=ENV) as worker:
        wait_for(lambda: _scraped(port, done), 30, "the task's metrics")
        text = _scrape(port)
        # Loopback only, by default; and no scrape without the token.
        assert _listening(worker.pid, port) == ["127.0.0.1"]
        assert _refused(port, None) == 401
        assert _refused(port, "not-the-token") == 401
        assert _refused(port, TOKEN + "x") == 401
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0

    assert "# HELP taskflow_tasks_completed_total Attempts that ended, by status.\n" in text
    assert "# TYPE taskflow_tasks_completed_total counter\n" in text
    assert f"{done} 1\n" in text
    assert "# TYPE taskflow_task_latency_seconds histogram\n" in text
    assert re.search(r'taskflow_task_latency_seconds_bucket\{.*le="\+Inf"\} 2\n', text)
    assert "# TYPE taskflow_tasks_running gauge\n" in text
    assert 'taskflow_queue_depth{queue="default",state="ready"} 0\n' in text
    assert 'taskflow_tasks_scheduled_total{task="logapp.work",queue="default"} 2\n' in text
    assert SECRET not in text


def test_the_processes_of_a_supervised_worker_share_one_port(tmp_path: Path) -> None:
    port = _free_port()
    args = ["worker", "-A", "logapp", "-P", "2", "--metrics-port", str(port)]
    args += ["--metrics-token-file", _token_file(tmp_path)]
    with running(args, tmp_path, env=ENV) as supervisor:
        wait_for(lambda: len(pids(tmp_path, "done")) == 2, 30, "both processes' tasks")
        wait_for(lambda: _scraped(port, 'process="1"'), 30, "the first process's metrics")
        wait_for(lambda: _scraped(port, 'process="2"'), 30, "the second process's metrics")
        text = _scrape(port)
        assert _refused(port, None) == 401
        # Each process serves the supervisor on a loopback port of its own, which asks
        # for a token of the supervisor's: neither no token nor the scrapers' one reads it.
        children = psutil.Process(supervisor.pid).children()
        inner = [
            conn.laddr
            for child in children
            for conn in child.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert len(inner) == 2
        assert {address.ip for address in inner} == {"127.0.0.1"}
        for address in inner:
            assert _refused(address.port, None) == 401
            assert _refused(address.port, TOKEN) == 401
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0

    # The supervisor serves the metrics on a thread: it starts its workers, never forks.
    assert "started worker process 1" in supervisor.stderr
    assert "forked" not in supervisor.stderr
    assert text.count("# TYPE taskflow_tasks_completed_total counter\n") == 1
    for index in ("1", "2"):
        assert (
            f'taskflow_tasks_completed_total{{process="{index}",task="logapp.work",'
            f'queue="default",status="succeeded"}} 1\n'
        ) in text


def test_a_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["worker", "-A", "logapp", "--metrics-port", str(port)]
        result = run([*args, "--metrics-token-file", _token_file(tmp_path)], tmp_path, env=ENV)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"taskflow: error: --metrics-port {port}: Address already in use"
    )


def test_https_with_a_token_on_another_address(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = _free_port()
    args = ["worker", "-A", "logapp", "--metrics-port", str(port), "--metrics-host", "0.0.0.0"]
    args += ["--metrics-token-file", _token_file(tmp_path)]
    args += ["--metrics-tls-cert", str(pki.server_cert), "--metrics-tls-key", str(pki.server_key)]
    context = ssl.create_default_context(cafile=str(pki.ca))
    done = 'status="succeeded"'
    with running(args, tmp_path, env=ENV) as worker:
        wait_for(lambda: _scraped(port, done, scheme="https", context=context), 30, "the metrics")
        assert _listening(worker.pid, port) == ["0.0.0.0"]
        # Plain HTTP gets nothing; the worker goes on serving.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _scrape(port)
        unauthorized = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unauthorized, timeout=5, context=context)
        refused.value.close()
        assert refused.value.code == 401
        assert done in _scrape(port, scheme="https", context=context)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_beyond_loopback_it_serves_without_a_token_only_when_told_to(tmp_path: Path) -> None:
    port = _free_port()
    base = ["worker", "-A", "logapp", "--metrics-port", str(port)]
    refused = run([*base, "--metrics-host", "0.0.0.0"], tmp_path, env=ENV)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "Error: --metrics-host 0.0.0.0 serves beyond this machine: give --metrics-token-file "
        "(a bearer token every scrape sends), or --metrics-insecure-no-auth"
    )

    # The plain command serves this machine only, and needs no token there.
    with running(base, tmp_path, env=ENV) as worker:
        wait_for(lambda: _scraped(port, 'status="succeeded"', token=None), 30, "the metrics")
        assert _listening(worker.pid, port) == ["127.0.0.1"]
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0

    told = [*base, "--metrics-host", "0.0.0.0", "--metrics-insecure-no-auth"]
    with running(told, tmp_path, env=ENV) as worker:
        wait_for(lambda: _scraped(port, 'status="succeeded"', token=None), 30, "the metrics")
        assert _listening(worker.pid, port) == ["0.0.0.0"]
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics-host", "0.0.0.0"], "--metrics-host needs --metrics-port"),
        (["--metrics-port", "0", "--metrics-insecure-no-auth", "--metrics-tls-cert", "c.pem"],
         "--metrics-tls-cert and --metrics-tls-key go together"),
        (["--metrics-port", "0", "--metrics-token-file", "{tmp}/missing-file"],
         "--metrics-token-file '{tmp}/missing-file' cannot be read: No such file or directory"),
        (["--metrics-port", "0", "--metrics-token-file", "{tmp}/two-lines"],
         "--metrics-token-file '{tmp}/two-lines' must hold the secret on one line"),
        (["--metrics-port", "0", "--metrics-token-file", "{tmp}/two-lines",
          "--metrics-insecure-no-auth"], "exclude each other"),
    ],
)  # fmt: skip
def test_bad_metrics_options_are_one_line_and_exit_status_2(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "two-lines").write_text("first-secret-line\nsecond\n")
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    result = run(["worker", "-A", "logapp", *extra], tmp_path, env=ENV)
    assert result.returncode == 2
    assert message.format(tmp=tmp_path) in result.stderr
    assert "first-secret-line" not in result.stderr


def test_tls_files_that_are_not_a_certificate_are_named(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    args = ["worker", "-A", "logapp", "--metrics-port", str(_free_port())]
    args += ["--metrics-insecure-no-auth", "--metrics-tls-cert", str(tmp_path / "cert.pem")]
    args += ["--metrics-tls-key", str(tmp_path / "key.pem")]
    result = run(args, tmp_path, env=ENV)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"taskflow: error: --metrics-tls-cert '{tmp_path}/cert.pem' / --metrics-tls-key "
        f"'{tmp_path}/key.pem': not a PEM certificate and its unencrypted key"
    )


def test_the_token_read_from_its_file_never_shows_in_a_repr(tmp_path: Path) -> None:
    from taskflow.cli.metrics_options import metrics_serving

    serving = metrics_serving(9100, "0.0.0.0", _token_file(tmp_path), False, None, None)
    assert serving is not None
    assert serving.token == TOKEN
    assert TOKEN not in repr(serving)


def test_an_encrypted_key_is_refused_not_asked_for_on_the_terminal(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    locked = tmp_path / "locked.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret",
         "-out", str(locked)],
        check=True, capture_output=True,
    )  # fmt: skip
    args = ["worker", "-A", "logapp", "--metrics-port", str(_free_port())]
    args += ["--metrics-tls-cert", str(pki.server_cert), "--metrics-tls-key", str(locked)]
    # On a terminal, as an operator starts it: OpenSSL would ask for the pass phrase there.
    controller, terminal = pty.openpty()
    worker = subprocess.Popen(
        [*taskflow_command(), *args],
        cwd=APPS,
        env=environment(tmp_path, ENV),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    shown = b""
    try:
        assert worker.wait(30) == 2
        while select.select([controller], [], [], 0.5)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        os.close(controller)
    text = shown.decode(errors="replace")
    assert "pass phrase" not in text.lower()
    assert "not a PEM certificate and its unencrypted key" in text
