"""NATS over TLS against a real ``nats-server`` (JetStream, TLS required) started by the
test: round trips on ``tls://`` and on ``nats://`` with a CA file, mutual TLS, a wrong CA,
a missing client certificate, a token file and an nkey seed file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from taskflow import App
from taskflow.brokers.nats import NatsBroker
from taskflow.errors import BrokerError
from taskflow.results.nats import NatsResultStore
from tests.integration.nats_helpers import private_nats
from tests.tls.conftest import Secrets
from tests.tls.servers import Pki, tls_nats

pytestmark = pytest.mark.integration

SecretFile = Callable[[str], tuple[Path, str]]


def _url(scheme: str, port: int, **options: object) -> str:
    query = "&".join(f"{name}={quote(str(value))}" for name, value in options.items())
    return f"{scheme}://127.0.0.1:{port}?prefix=tls{uuid.uuid4().hex[:8]}&{query}"


def _round_trip(broker: str | NatsBroker, results: str | NatsResultStore | None = None) -> None:
    with App("natstls", broker=broker, results=results) as app:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        with app.worker(concurrency=2):
            assert add.delay(20, 22).get(timeout=20) == 42


def test_a_task_round_trips_over_tls_scheme(pki: Pki, tmp_path: Path) -> None:
    with tls_nats(pki, tmp_path) as port:
        _round_trip(_url("tls", port, tls_ca_file=pki.ca))


def test_a_ca_file_on_a_nats_url_round_trips_over_tls(pki: Pki, tmp_path: Path) -> None:
    with tls_nats(pki, tmp_path) as port:
        _round_trip(_url("nats", port, tls_ca_file=pki.ca, tls_min_version="1.3"))


def test_mutual_tls_required_and_satisfied_with_keyword_arguments(pki: Pki, tmp_path: Path) -> None:
    with tls_nats(pki, tmp_path, client_certs=True) as port:
        url = f"tls://127.0.0.1:{port}"
        prefix = f"tls{uuid.uuid4().hex[:8]}"
        tls = {
            "tls_ca_file": str(pki.ca),
            "tls_cert_file": str(pki.client_cert),
            "tls_key_file": str(pki.client_key),
        }
        _round_trip(
            NatsBroker(url, prefix=prefix, **tls),
            NatsResultStore(url, prefix=prefix, **tls),
        )


def test_a_server_signed_by_another_ca_fails_naming_certificate_verification(
    pki: Pki, tmp_path: Path
) -> None:
    with tls_nats(pki, tmp_path) as port:
        url = _url("tls", port, tls_ca_file=pki.other_ca, connect_timeout=2)
        with App("wrongca", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        text = str(info.value)
        assert "certificate verify failed" in text
        assert f"127.0.0.1:{port}" in text


def test_a_server_requiring_a_client_certificate_says_so_when_none_is_given(
    pki: Pki, tmp_path: Path
) -> None:
    with tls_nats(pki, tmp_path, client_certs=True) as port:
        url = _url("tls", port, tls_ca_file=pki.ca, connect_timeout=2)
        with App("nocert", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        text = str(info.value)
        assert "client certificate" in text
        assert f"127.0.0.1:{port}" in text


def test_the_token_comes_from_token_file(
    pki: Pki, tmp_path: Path, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, token = secret_file("nats-token")
    config = f'authorization {{ token: "{token}" }}'
    with tls_nats(pki, tmp_path, config=config) as port:
        url = _url("tls", port, tls_ca_file=pki.ca, token_file=path)
        _round_trip(url)
        with App("shown", broker=url) as app:
            shown = " ".join([repr(app), repr(app.broker), repr(app.results)])
        assert not test_secrets.found_in(shown)
        # Without the token the server refuses, and the error does not show the token.
        bare = _url("tls", port, tls_ca_file=pki.ca, connect_timeout=2)
        with App("notoken", broker=bare) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
        assert "authorization" in str(info.value).lower()
        assert not test_secrets.found_in(str(info.value))


def test_the_token_comes_from_the_environment(
    pki: Pki, tmp_path: Path, test_secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = test_secrets.new("env-token")
    config = f'authorization {{ token: "{token}" }}'
    with tls_nats(pki, tmp_path, config=config) as port:
        monkeypatch.setenv("TASKFLOW_BROKER_TOKEN", token)
        _round_trip(_url("tls", port, tls_ca_file=pki.ca))


def test_an_nkey_seed_file_authenticates(pki: Pki, tmp_path: Path, test_secrets: Secrets) -> None:
    nkeys = pytest.importorskip("nkeys")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    test_secrets.add(seed.decode())
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    config = f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'
    store = tmp_path / "store"
    store.mkdir()
    with tls_nats(pki, store, config=config) as port:
        _round_trip(_url("tls", port, tls_ca_file=pki.ca, nkey_file=seed_file))


def test_tls_asked_for_against_a_server_without_tls_is_refused_not_downgraded(
    pki: Pki, tmp_path: Path, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, _ = secret_file("nats-token")
    with private_nats(tmp_path) as (port, _procs):
        url = _url("tls", port, tls_ca_file=pki.ca, token_file=path, connect_timeout=2)
        with App("plain", broker=url) as app:

            @app.task
            def noop() -> None: ...

            with pytest.raises(BrokerError) as info:
                noop.delay()
    text = str(info.value)
    assert "does not require TLS" in text
    assert f"127.0.0.1:{port}" in text
    assert not test_secrets.found_in(text)
