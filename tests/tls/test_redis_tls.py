"""Redis over TLS against a real ``redis-server --tls-port`` started by the test: round
trips (in-process and through the ``taskflow worker`` command), mutual TLS, a wrong CA, a
missing client certificate, and passwords from a file or the environment."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from taskflow import App
from taskflow.brokers.redis import RedisBroker
from taskflow.errors import BrokerError
from taskflow.results.redis import RedisResultStore
from tests.tls.conftest import Secrets
from tests.tls.servers import Pki, tls_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SecretFile = Callable[[str], tuple[Path, str]]


def _url(port: int, **options: object) -> str:
    query = "&".join(f"{name}={quote(str(value))}" for name, value in options.items())
    return f"rediss://127.0.0.1:{port}/0?prefix=tls{uuid.uuid4().hex[:8]}&{query}"


def _round_trip(url: str | RedisBroker) -> None:
    with App("tls", broker=url) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        with app.worker(concurrency=2):
            assert add.delay(2, 3).get(timeout=15) == 5
            assert [
                r.get(timeout=15) for r in app.enqueue_many([add.s(i, 1) for i in range(5)])
            ] == [
                1,
                2,
                3,
                4,
                5,
            ]


def test_a_task_round_trips_over_tls_with_the_ca_from_the_url(pki: Pki) -> None:
    with tls_redis(pki) as port:
        _round_trip(_url(port, tls_ca_file=pki.ca))


def test_a_ca_file_on_a_plain_redis_url_turns_tls_on(pki: Pki) -> None:
    with tls_redis(pki) as port:
        url = _url(port, tls_ca_file=pki.ca).replace("rediss://", "redis://", 1)
        _round_trip(url)


def test_mutual_tls_round_trips_with_the_client_certificate_as_keyword_arguments(
    pki: Pki,
) -> None:
    with tls_redis(pki, client_certs=True) as port:
        url = f"rediss://127.0.0.1:{port}/0"
        prefix = f"tls{uuid.uuid4().hex[:8]}"
        tls = {
            "tls_ca_file": str(pki.ca),
            "tls_cert_file": str(pki.client_cert),
            "tls_key_file": str(pki.client_key),
            "tls_min_version": "1.3",
        }
        broker = RedisBroker(url, prefix=prefix, **tls)
        store = RedisResultStore(url, prefix=prefix, **tls)
        with App("mtls", broker=broker, results=store) as app:

            @app.task
            def echo(text: str) -> str:
                return text

            with app.worker(concurrency=1):
                assert echo.delay("hello").get(timeout=15) == "hello"


def test_a_server_signed_by_another_ca_fails_naming_certificate_verification(
    pki: Pki,
) -> None:
    with tls_redis(pki) as port:
        url = _url(port, tls_ca_file=pki.other_ca, connect_timeout=2)
        with App("wrongca", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        text = str(info.value)
        assert "certificate verify failed" in text
        assert f"127.0.0.1:{port}" in text


def test_a_server_requiring_a_client_certificate_says_so_when_none_is_given(
    pki: Pki,
) -> None:
    with tls_redis(pki, client_certs=True) as port:
        broker = RedisBroker(_url(port, tls_ca_file=pki.ca, connect_timeout=2))
        with App("nocert", broker=broker, results="memory://") as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        text = str(info.value)
        assert "client certificate" in text
        assert f"127.0.0.1:{port}" in text


def test_the_password_comes_from_password_file_and_never_shows(
    pki: Pki, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, password = secret_file("redis-password")
    with tls_redis(pki, password=password) as port:
        url = _url(port, tls_ca_file=pki.ca, password_file=path)
        _round_trip(url)
        with App("shown", broker=url) as app:
            shown = [repr(app), repr(app.broker), repr(app.results)]
        assert not test_secrets.found_in(" ".join(shown))
        assert str(path) in repr(app.broker)  # the path is not a secret: it stays readable


def test_a_wrong_password_is_a_broker_error_without_the_password(
    pki: Pki, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    _, password = secret_file("redis-password")
    wrong, _ = secret_file("wrong-password")
    with tls_redis(pki, password=password) as port:
        url = _url(port, tls_ca_file=pki.ca, password_file=wrong, connect_timeout=2)
        with App("wrongpw", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "invalid username-password pair" in str(info.value)
        assert not test_secrets.found_in(str(info.value))


def test_the_worker_command_takes_tls_options_and_the_password_from_the_environment(
    pki: Pki, test_secrets: Secrets, tmp_path: Path
) -> None:
    password = test_secrets.new("env-password")
    with tls_redis(pki, password=password) as port:
        url = _url(port, tls_ca_file=pki.ca)
        env = {
            **os.environ,
            "TASKFLOW_BROKER_URL": url,
            "TASKFLOW_BROKER_PASSWORD": password,
            "PYTHONPATH": str(ROOT),
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskflow.cli.main",
                    "worker",
                    "-A",
                    "tests.tls.tls_app:app",
                    "-c",
                    "1",
                    "--loglevel",
                    "debug",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                with pytest.MonkeyPatch.context() as patch:
                    patch.setenv("TASKFLOW_BROKER_PASSWORD", password)
                    with App("client", broker=url) as app:
                        result = app.send_task("tlsit.shout", args=("hi",))
                        assert result.get(timeout=30) == "HI"
            finally:
                worker.terminate()
                worker.wait(20)
        # No secret in the worker's command line (the test gave none) nor in its output.
        assert not test_secrets.found_in(log.read_text(errors="replace"))


def test_tls_verify_false_is_a_loud_warning_once_per_server(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_redis(pki) as port:
        url = _url(port, tls_verify="false")
        with caplog.at_level(logging.WARNING, logger="taskflow.security"):
            with App("noverify", broker=url) as app:  # broker and result store: one line

                @app.task
                def noop() -> int:
                    return 1

                with app.worker(concurrency=1):
                    assert noop.delay().get(timeout=15) == 1
        lines = [r for r in caplog.records if r.name == "taskflow.security"]
        assert len(lines) == 1
        assert lines[0].levelno == logging.WARNING
        assert "verification is OFF" in lines[0].getMessage()
        assert f"127.0.0.1:{port}" in lines[0].getMessage()


def test_the_result_store_derived_from_a_broker_built_with_keyword_arguments_uses_its_tls(
    pki: Pki,
) -> None:
    with tls_redis(pki, client_certs=True) as port:
        broker = RedisBroker(
            f"rediss://127.0.0.1:{port}/0",
            prefix=f"tls{uuid.uuid4().hex[:8]}",
            tls_ca_file=str(pki.ca),
            tls_cert_file=str(pki.client_cert),
            tls_key_file=str(pki.client_key),
        )
        _round_trip(broker)


def test_a_certificate_for_another_host_name_is_refused_by_default(pki: Pki) -> None:
    with tls_redis(pki, misnamed=True) as port:
        url = _url(port, tls_ca_file=pki.ca, connect_timeout=2)
        with App("misnamed", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        assert "certificate verify failed" in str(info.value)
        assert "mismatch" in str(info.value)
        # With verification off (and a loud warning) the same server is accepted.
        _round_trip(_url(port, tls_ca_file=pki.ca, tls_verify="false"))
