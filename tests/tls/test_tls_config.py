"""TLS and credential options checked when the App is built: files, PEM, conflicts,
precedence, the environment, and masking (no server needed)."""

from __future__ import annotations

import logging
import os
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from taskflow import App
from taskflow.brokers.nats import NatsBroker
from taskflow.brokers.redis import RedisBroker
from taskflow.errors import ConfigError
from taskflow.results.nats import NatsResultStore
from taskflow.results.redis import RedisResultStore
from taskflow.urls import mask_url
from tests.tls.conftest import Secrets
from tests.tls.servers import Pki

SecretFile = Callable[[str], tuple[Path, str]]


def _config_error(url: str) -> str:
    with pytest.raises(ConfigError) as info:
        App("cfg", broker=url)
    return str(info.value)


@pytest.mark.parametrize("scheme", ["rediss://127.0.0.1:6380/0", "tls://127.0.0.1:4443"])
@pytest.mark.parametrize("option", ["tls_ca_file", "tls_cert_file", "password_file", "token_file"])
def test_a_missing_file_is_a_config_error_at_app_naming_the_option_and_path(
    scheme: str, option: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.pem"
    text = _config_error(f"{scheme}?{option}={missing}")
    assert option in text
    assert str(missing) in text
    assert "cannot be read" in text


def test_an_unreadable_key_is_a_config_error_naming_the_option(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    if os.geteuid() == 0:
        key.mkdir()  # root reads any file: a directory cannot be read as one
    else:
        key.write_bytes(pki.client_key.read_bytes())
        key.chmod(0)
    url = f"rediss://127.0.0.1:6380/0?tls_cert_file={pki.client_cert}&tls_key_file={key}"
    text = _config_error(url)
    assert "tls_key_file" in text
    assert str(key) in text


def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    text = _config_error(f"rediss://127.0.0.1:6380/0?tls_ca_file={bad}")
    assert "tls_ca_file" in text
    assert "PEM" in text


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(
    pki: Pki,
) -> None:
    url = f"nats://127.0.0.1:4222?tls_cert_file={pki.client_cert}&tls_key_file={pki.server_key}"
    text = _config_error(url)
    assert "tls_cert_file" in text
    assert "tls_key_file" in text
    assert str(pki.server_key) in text


def test_a_key_file_without_a_certificate_is_a_config_error(pki: Pki) -> None:
    text = _config_error(f"rediss://127.0.0.1:6380/0?tls_key_file={pki.client_key}")
    assert "tls_key_file needs tls_cert_file" in text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("tls_min_version=1.1", "tls_min_version must be 1.2 or 1.3"),
        ("tls_verify=maybe", "tls_verify='maybe' must be true or false"),
    ],
)
def test_bad_tls_values_are_config_errors(query: str, message: str) -> None:
    assert message in _config_error(f"rediss://127.0.0.1:6380/0?{query}")


def test_tls_verify_on_a_plain_url_is_refused_rather_than_ignored() -> None:
    text = _config_error("redis://127.0.0.1:6379/0?tls_verify=false")
    assert "apply to TLS connections only" in text


def test_a_ca_file_on_a_plain_scheme_turns_tls_on(pki: Pki) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:6379/0?tls_ca_file={pki.ca}")
    assert broker._conn.security.tls
    nats = NatsBroker("nats://127.0.0.1:4222", tls_ca_file=str(pki.ca))
    assert nats._conn.security.tls


def test_keyword_arguments_win_over_url_options(pki: Pki) -> None:
    store = RedisResultStore("rediss://127.0.0.1:6380/0?tls_min_version=1.2", tls_min_version="1.3")
    assert store._conn.security.min_version is ssl.TLSVersion.TLSv1_3
    # ... and reach the URL a derived result store is built from.
    assert "tls_min_version=1.3" in store.url
    assert "tls_min_version=1.2" not in store.url


def test_server_name_and_certificate_verification_are_on_by_default(pki: Pki) -> None:
    store = NatsResultStore("tls://127.0.0.1:4222", tls_ca_file=str(pki.ca))
    context = store._conn.security.context
    assert context is not None
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_a_password_in_the_url_and_a_password_file_conflict(
    secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, _ = secret_file("pw")
    url_secret = test_secrets.new("urlpw")
    text = _config_error(f"redis://:{url_secret}@127.0.0.1:6379/0?password_file={path}")
    assert "password_file" in text
    assert not test_secrets.found_in(text)


def test_a_password_file_must_hold_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("one\ntwo\n")
    text = _config_error(f"redis://127.0.0.1:6379/0?password_file={path}")
    assert "one line" in text
    assert "two" not in text


def test_the_environment_gives_the_password_when_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    env = test_secrets.new("env")
    monkeypatch.setenv("TASKFLOW_BROKER_PASSWORD", env)
    assert RedisBroker("redis://127.0.0.1:6379/0")._conn.client_options["password"] == env
    # The result store falls back on the broker's variable, unless it has its own.
    assert RedisResultStore("redis://127.0.0.1:6379/0")._conn.security.password == env
    own = test_secrets.new("results-env")
    monkeypatch.setenv("TASKFLOW_RESULTS_PASSWORD", own)
    assert RedisResultStore("redis://127.0.0.1:6379/0")._conn.security.password == own
    # A file beats the environment; a password in the URL does too.
    path, from_file = secret_file("file")
    broker = RedisBroker(f"redis://127.0.0.1:6379/0?password_file={path}")
    assert broker._conn.security.password == from_file
    url_secret = test_secrets.new("url")
    broker = RedisBroker(f"redis://:{url_secret}@127.0.0.1:6379/0")
    assert "password" not in broker._conn.client_options


def test_a_nats_user_in_the_url_takes_its_password_from_a_file(
    secret_file: SecretFile,
) -> None:
    path, password = secret_file("natspw")
    broker = NatsBroker(f"nats://alice@127.0.0.1:4222?password_file={path}")
    conn = broker._conn
    assert conn.server == "nats://127.0.0.1:4222"
    assert conn.security.password == password


def test_a_nats_token_in_the_url_and_a_token_file_conflict(
    secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, _ = secret_file("tok")
    token = test_secrets.new("urltoken")
    text = _config_error(f"nats://{token}@127.0.0.1:4222?token_file={path}")
    assert "token_file" in text
    assert not test_secrets.found_in(text)


def test_a_bad_nkey_seed_or_creds_file_is_a_config_error_without_its_content(
    tmp_path: Path, test_secrets: Secrets
) -> None:
    pytest.importorskip("nkeys")
    junk = test_secrets.new("SUjunkseed")
    seed = tmp_path / "user.nk"
    seed.write_text(junk)
    text = _config_error(f"nats://127.0.0.1:4222?nkey_file={seed}")
    assert "nkey_file" in text and str(seed) in text
    assert not test_secrets.found_in(text)
    creds = tmp_path / "user.creds"
    creds.write_text(junk)
    text = _config_error(f"tls://127.0.0.1:4222?creds_file={creds}")
    assert "creds_file" in text and str(creds) in text
    assert not test_secrets.found_in(text)


def test_secrets_are_masked_in_reprs_and_option_paths_stay_readable(
    pki: Pki, secret_file: SecretFile, test_secrets: Secrets
) -> None:
    path, _ = secret_file("pw")
    token = test_secrets.new("qtoken")
    url = (
        f"rediss://user:{quote(token)}@127.0.0.1:6380/0?tls_ca_file={pki.ca}"
        f"&tls_cert_file={pki.client_cert}&tls_key_file={pki.client_key}"
    )
    with App("masked", broker=url) as app:
        shown = " ".join(
            [repr(app), repr(app.broker), repr(app.results), repr(app.broker._conn.security)]  # type: ignore[attr-defined]
        )
    assert not test_secrets.found_in(shown)
    assert str(pki.client_key) in shown  # a path is not a secret
    assert "password=***" in mask_url(f"nats://h?password={token}&password_file={path}")
    assert f"password_file={path}" in mask_url(f"nats://h?password={token}&password_file={path}")


def test_tls_verify_false_warns_once_per_server(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    url = f"rediss://127.0.0.1:6390/0?tls_verify=false&prefix=w{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="taskflow.security"):
        RedisBroker(url)
        RedisResultStore(url)
        RedisBroker(url)
    lines = [r for r in caplog.records if r.name == "taskflow.security"]
    assert len(lines) == 1
    assert "127.0.0.1:6390" in lines[0].getMessage()


def test_an_nkey_file_is_the_whole_login_the_environment_adds_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_secrets: Secrets
) -> None:
    nkeys = pytest.importorskip("nkeys")
    seed = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER)
    test_secrets.add(seed.decode())
    path = tmp_path / "user.nk"
    path.write_bytes(seed)
    monkeypatch.setenv("TASKFLOW_BROKER_TOKEN", test_secrets.new("envtoken"))
    security = NatsBroker("nats://127.0.0.1:4222", nkey_file=str(path))._conn.security
    assert security.nkey_file == str(path)
    assert security.token is None
    assert security.password is None


def test_redis_connections_verify_the_server_name_by_default(pki: Pki) -> None:
    options = RedisBroker(f"rediss://127.0.0.1:6380/0?tls_ca_file={pki.ca}")._conn.client_options
    assert options["ssl_check_hostname"] is True
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_min_version"] is ssl.TLSVersion.TLSv1_2


def test_a_tls_nats_broker_keeps_its_results_in_jetstream_with_the_same_options(
    pki: Pki,
) -> None:
    with App("kv", broker=f"tls://127.0.0.1:4222?tls_ca_file={pki.ca}") as app:
        assert isinstance(app.results, NatsResultStore)
        assert app.results._conn.security.tls
        assert app.results._conn.security.ca_file == str(pki.ca)
