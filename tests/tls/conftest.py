"""Fixtures of the TLS tests: the test PKI, secrets the tests use, and a check that none of
them shows in any log record of any test here."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tls.servers import Pki, make_pki


class Secrets:
    """Every secret the TLS tests hand to taskflow, and the text that must never hold one."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def new(self, label: str) -> str:
        """A fresh random secret, remembered for the leak checks."""
        value = f"{label}-{secrets.token_hex(12)}"
        self.values.append(value)
        return value

    def add(self, value: str) -> str:
        """Remember ``value`` (key material made elsewhere)."""
        self.values.append(value)
        return value

    def found_in(self, text: str) -> list[str]:
        """The secrets that ``text`` holds."""
        return [value for value in self.values if value in text]


_SECRETS = Secrets()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The private CA, server and client certificates of this test run."""
    made = make_pki(tmp_path_factory.mktemp("pki"))
    for key in (made.client_key, made.server_key, made.misnamed_key):
        # A line of the base64 body of each private key: key material must not leak either.
        body = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
        _SECRETS.add(body[0])
    return made


@pytest.fixture
def test_secrets() -> Secrets:
    """The registry of the secrets a test uses (checked against every log record)."""
    return _SECRETS


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[list[str]]:
    """Capture every log record at DEBUG (taskflow's and the client libraries') during a
    test, and fail the test if one holds a secret or key material."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("taskflow", "redis", "nats", "asyncio")]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.texts
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    leaked = [(text, _SECRETS.found_in(text)) for text in handler.texts]
    leaked = [(text, found) for text, found in leaked if found]
    assert not leaked, f"secrets in log records: {leaked}"


@pytest.fixture
def secret_file(tmp_path: Path, test_secrets: Secrets):  # type: ignore[no-untyped-def]
    """Write a fresh secret to a file of its own (mode 0600); returns (path, secret)."""

    def make(label: str) -> tuple[Path, str]:
        value = test_secrets.new(label)
        path = tmp_path / f"{label}.txt"
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path, value

    return make
