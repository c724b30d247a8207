"""``taskflow admin`` as a real process: it binds to 127.0.0.1 by default, serves HTTPS with
``--tls-cert/--tls-key`` (cookies then ``Secure``), and needs a token for the API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from tests.integration.redis_helpers import ROOT
from tests.tls.servers import make_pki

from .test_browser import _free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_the_command_serves_https_on_localhost(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:tls-admin-token\n")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "TASKFLOW_BROKER_URL": f"sqlite:///{tmp_path / 'tls.db'}"}  # fmt: skip
    command = [
        sys.executable, "-m", "taskflow.cli.main", "admin", "-A",
        "tests.admin_web.browser_app:app", "--port", str(port), "--token-file", str(tokens),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _serving(port):
            assert proc.poll() is None, "taskflow admin exited"
            assert time.monotonic() < deadline, "taskflow admin did not start"
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(pki.ca))
        with httpx2.Client(verify=context, base_url=f"https://127.0.0.1:{port}") as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/api/v1/queues").status_code == 401
            queues = client.get(
                "/api/v1/queues", headers={"Authorization": "Bearer tls-admin-token"}
            )
            assert queues.status_code == 200
            assert "Secure" in client.get("/login").headers["set-cookie"]
        # Only the loopback address is bound.
        listening = ""
        if shutil.which("ss"):
            listening = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
            ).stdout
        if listening:  # the local address is the fourth column
            assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        assert proc.stdout is not None
        banner = proc.stdout.read().decode()
        proc.stdout.close()
    assert f"https://127.0.0.1:{port}/" in banner
