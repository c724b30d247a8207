"""TLS and credentials of one backend connection, checked once when the backend is built.

Every backend on a server takes the same options, as keyword arguments or as URL query
options (``rediss://h:6380/0?tls_ca_file=/etc/ca.pem``):

* ``tls_ca_file``: the CA (PEM) that signs the server's certificate, trusted in addition
  to the system's CAs;
* ``tls_cert_file`` / ``tls_key_file``: the client certificate and its key (mutual TLS;
  the key may also sit in the certificate file);
* ``tls_verify``: check the server's certificate and name (default true; false is logged
  as a warning once per server);
* ``tls_min_version``: ``1.2`` (default) or ``1.3``;
* ``password_file`` / ``token_file``: the password or token, read from a file (one line);
* NATS only: ``creds_file`` (a ``.creds`` file: user JWT and nkey seed) and ``nkey_file``
  (an nkey seed).

A TLS scheme (``rediss://``, ``tls://``) or a CA or client file turns TLS on. Without a
password or token in the URL or a file, the environment gives it:
``TASKFLOW_BROKER_PASSWORD`` / ``TASKFLOW_BROKER_TOKEN`` for a broker,
``TASKFLOW_RESULTS_PASSWORD`` / ``TASKFLOW_RESULTS_TOKEN`` for a result store (which falls
back on the broker's variables: by default it lives on the broker's server).

Everything is checked when the backend is built: a file that is missing or unreadable, a
certificate or key that is not valid PEM, a key that does not match its certificate is a
:class:`~taskflow.errors.ConfigError` naming the option and the path (never the file's
content). The :class:`ssl.SSLContext` built for the check is the one NATS connections use.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from .errors import ConfigError

__all__ = [
    "CREDENTIAL_OPTIONS",
    "ENV",
    "NATS_OPTIONS",
    "TLS_OPTIONS",
    "Security",
    "explain",
    "read_secret",
    "resolve",
    "server_context",
    "url_with",
]

log = logging.getLogger("taskflow.security")

TLS_OPTIONS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify", "tls_min_version")
CREDENTIAL_OPTIONS = ("password_file", "token_file")
NATS_OPTIONS = ("creds_file", "nkey_file")

ENV: dict[str, tuple[str, ...]] = {
    "broker_password": ("TASKFLOW_BROKER_PASSWORD",),
    "broker_token": ("TASKFLOW_BROKER_TOKEN",),
    "results_password": ("TASKFLOW_RESULTS_PASSWORD", "TASKFLOW_BROKER_PASSWORD"),
    "results_token": ("TASKFLOW_RESULTS_TOKEN", "TASKFLOW_BROKER_TOKEN"),
}
"""The environment variables a role's password and token come from, first found wins."""

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Security:
    """The checked TLS and credential settings of one connection.

    Secrets (``password``, ``token``) and the SSL context never show in ``repr``.
    """

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    nkey_file: str | None = None
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def secret(self) -> str | None:
        """The password or token, whichever was given (Redis sends either with AUTH)."""
        return self.password if self.password is not None else self.token


def url_with(url: str, given: Mapping[str, Any]) -> str:
    """``url`` with the options in ``given`` (keyword arguments, None: not given) added to
    its query, so that a result store derived from a broker's URL connects the same way."""
    extra = {name: value for name, value in given.items() if value is not None}
    if not extra:
        return url
    base, _, query = url.partition("?")
    kept = [item for item in query.split("&") if item and item.partition("=")[0] not in extra]
    added = [f"{name}={quote(_text(value), safe='/')}" for name, value in extra.items()]
    return base + "?" + "&".join(kept + added)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _flag(value: Any, name: str, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")


def _merged(
    given: Mapping[str, Any], query: Mapping[str, str], names: tuple[str, ...]
) -> dict[str, Any]:
    """Keyword arguments win over the URL's query options of the same name."""
    return {name: given[name] if given.get(name) is not None else query.get(name) for name in names}


def _path(options: Mapping[str, Any], name: str, where: str) -> str | None:
    """A file option: None, or a path that exists and can be read."""
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(f"{where}: {name} must be a file path")
    path = os.fspath(value)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}: {name} {path!r} cannot be read: {reason}") from None
    return str(path)


def read_secret(path: str, name: str, where: str) -> str:
    """The secret on the one line of the file at ``path`` (a ConfigError naming ``where``,
    the option ``name`` and the path, never the content, if it holds anything else)."""
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {name} {path!r} is not UTF-8 text") from None
    secret = text.strip("\r\n")
    if not secret or "\n" in secret:
        raise ConfigError(f"{where}: {name} {path!r} must hold the secret on one line")
    return secret


def _context(
    where: str,
    *,
    ca: str | None,
    cert: str | None,
    key: str | None,
    verify: bool,
    least: ssl.TLSVersion,
) -> ssl.SSLContext:
    """The client context these files make; bad PEM is a ConfigError naming the option."""
    context = ssl.create_default_context()
    context.minimum_version = least
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                f"{where}: tls_ca_file {ca!r} holds no valid PEM certificate"
            ) from None
    if cert is not None:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key, password=_no_passphrase)
        except (ssl.SSLError, ValueError):
            files = f"tls_cert_file {cert!r}" + (f" / tls_key_file {key!r}" if key else "")
            raise ConfigError(
                f"{where}: {files}: not a valid PEM certificate and unencrypted private key "
                "that belong together"
            ) from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def server_context(cert: str, key: str | None, describe: str) -> ssl.SSLContext:
    """A server's context holding the certificate ``cert`` and its key; a ConfigError
    starting with ``describe`` (the options and files, never their content) if they are
    not a PEM certificate and an unencrypted key (an encrypted one is refused, not asked
    for on the terminal)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key, password=_no_passphrase)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"{describe}: not a PEM certificate and its unencrypted key ({reason})"
        ) from None
    return context


def _no_passphrase() -> str:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    raise ValueError("encrypted private keys are not supported")


def resolve(
    where: str,
    *,
    role: Literal["broker", "results"],
    scheme_tls: bool,
    url_password: bool,
    url_user: bool = False,
    given: Mapping[str, Any],
    query: Mapping[str, str],
    nats: bool = False,
) -> Security:
    """Check the options of one connection (``given`` keyword arguments over ``query``).

    ``where`` names the connection in errors (its masked URL); ``scheme_tls``: the scheme
    asks for TLS; ``url_password``: the URL holds a password of its own; ``url_user``: it
    holds a user name alone (NATS: a token, unless a password comes from a file or the
    environment).
    """
    names = TLS_OPTIONS + CREDENTIAL_OPTIONS + (NATS_OPTIONS if nats else ())
    options = _merged(given, query, names)
    ca = _path(options, "tls_ca_file", where)
    cert = _path(options, "tls_cert_file", where)
    key = _path(options, "tls_key_file", where)
    if key is not None and cert is None:
        raise ConfigError(f"{where}: tls_key_file needs tls_cert_file (the client certificate)")
    verify = _flag(options["tls_verify"], "tls_verify", where)
    least = options["tls_min_version"]
    if least is not None and str(least) not in _VERSIONS:
        raise ConfigError(f"{where}: tls_min_version must be 1.2 or 1.3, got {least!r}")
    tls = scheme_tls or ca is not None or cert is not None
    if not tls and (verify is not None or least is not None):
        raise ConfigError(
            f"{where}: tls_verify and tls_min_version apply to TLS connections only: use a TLS "
            "scheme (rediss://, tls://) or give tls_ca_file"
        )
    version = _VERSIONS[str(least or "1.2")]
    context = (
        _context(where, ca=ca, cert=cert, key=key, verify=verify is not False, least=version)
        if tls
        else None
    )
    if tls and verify is False:
        _warn_unverified(where)
    creds = _path(options, "creds_file", where)
    seed = _path(options, "nkey_file", where)
    if creds is not None or seed is not None:
        _check_nkeys(where, creds, seed)
    # A creds or nkey file is the whole login: the environment adds nothing to it.
    signed = creds is not None or seed is not None
    password, token = _credentials(
        options, where, role if not signed else None, url_password, url_user
    )
    return Security(
        tls=tls,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        verify=verify is not False,
        min_version=version,
        password=password,
        token=token,
        creds_file=creds,
        nkey_file=seed,
        context=context,
    )


def _credentials(
    options: Mapping[str, Any], where: str, role: str | None, url_password: bool, url_user: bool
) -> tuple[str | None, str | None]:
    """The password and token: from the URL or a file (two of them is an error), or else
    the environment of ``role`` (None: not read)."""
    password_file = _path(options, "password_file", where)
    token_file = _path(options, "token_file", where)
    if password_file is not None and token_file is not None:
        raise ConfigError(f"{where}: give password_file or token_file, not both")
    given = "password_file" if password_file is not None else "token_file"
    if (url_password and (password_file or token_file)) or (url_user and token_file):
        raise ConfigError(f"{where}: the URL holds a secret and {given} gives one too: keep one")
    if password_file is not None:
        return read_secret(password_file, "password_file", where), None
    if token_file is not None:
        return None, read_secret(token_file, "token_file", where)
    if url_password or role is None:
        return None, None
    password = _environ(ENV[f"{role}_password"])
    if password is not None or url_user:
        return password, None
    return None, _environ(ENV[f"{role}_token"])


def _environ(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _check_nkeys(where: str, creds: str | None, seed: str | None) -> None:
    if creds is not None and seed is not None:
        raise ConfigError(f"{where}: give creds_file or nkey_file, not both")
    try:
        import nkeys  # type: ignore[import-untyped]  # optional, NATS only
    except ModuleNotFoundError:
        option = "creds_file" if creds is not None else "nkey_file"
        raise ConfigError(
            f"{where}: {option} needs the 'nkeys' package: run pip install 'nats-py[nkeys]'"
        ) from None
    if seed is not None:
        with open(seed, "rb") as handle:
            raw = bytearray(handle.read().strip())
        try:
            nkeys.from_seed(raw)
        except Exception:
            raise ConfigError(f"{where}: nkey_file {seed!r} holds no valid nkey seed") from None
    if creds is not None:
        with open(creds, "rb") as handle:
            text = handle.read()
        if b"BEGIN NATS USER JWT" not in text or b"BEGIN USER NKEY SEED" not in text:
            raise ConfigError(
                f"{where}: creds_file {creds!r} is not a NATS .creds file (user JWT and seed)"
            )


_DROPPED = (
    "connection lost",
    "broken pipe",
    "reset by peer",
    "closed by server",
    "unexpected eof",
    "eof occurred",
    "alert_bad_certificate",
    "alert bad certificate",
)


def explain(reason: str, *, without_cert: bool) -> str:
    """A client library's connect error, with what it means for TLS said first.

    ``without_cert``: the connection uses TLS without a client certificate. A server that
    requires one refuses it with an alert or (TLS 1.3 checks the certificate after the
    handshake) simply drops the connection.
    """
    lower = reason.lower()
    if "certificate_verify_failed" in lower or "certificate verify failed" in lower:
        return (
            "TLS: certificate verify failed: the server's certificate is not signed by a "
            f"trusted CA (tls_ca_file) or does not name this host ({reason})"
        )
    if "certificate_required" in lower or "certificate required" in lower:
        return f"the server requires a client certificate (give tls_cert_file): {reason}"
    if without_cert and any(text in lower for text in _DROPPED):
        return (
            "the server refused or closed the TLS connection: it may require a client "
            f"certificate (give tls_cert_file and tls_key_file): {reason}"
        )
    return reason


def _warn_unverified(where: str) -> None:
    with _warned_lock:
        if where in _warned:
            return
        _warned.add(where)
    log.warning(
        "TLS certificate verification is OFF for %s (tls_verify=false): anyone on the network "
        "path can impersonate the server and read every task and result",
        where,
    )
