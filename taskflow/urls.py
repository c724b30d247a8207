"""Backend URLs: the scheme table, strict parsing and validation, and masking, in one place.

A URL names its backend by scheme (case-insensitive). Each scheme's broker and result store
classes are listed in :data:`SCHEMES`; the query options a URL takes are *derived* from
those classes' keyword-only constructor parameters (``prefix``, ``lease``, ...), never
listed by hand, and their types come from the parameters' annotations. Where one URL serves
both the broker and the result store (Redis, NATS: the result store is derived from the
broker's URL by default), it accepts the options of both.

Everything that would otherwise be silently ignored is a :class:`ConfigError` naming the
URL with its password masked and saying what to write instead: an unknown or unbuilt
scheme, an unknown query option, a value that is not of the option's type, a Redis path
that is not a database number, a path, credentials or host where the backend takes none.

:func:`mask_url` (from :mod:`taskflow._masking`) is the one masking helper: every message,
log line and ``repr`` that shows a URL shows it through this function.

:func:`backend_from_url` is the one factory behind ``broker_from_url`` and
``results_from_url``: it checks the URL against its scheme, then calls the class's
``from_url``, which takes its options through :func:`url_kwargs`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from ._masking import mask_url
from .errors import ConfigError

__all__ = [
    "SCHEMES",
    "SUPPORTED",
    "BackendURL",
    "Scheme",
    "amqp_vhost",
    "backend_class",
    "backend_from_url",
    "known_options",
    "load_backend",
    "mask_url",
    "option_bool",
    "option_float",
    "option_int",
    "parse_url",
    "reject_unknown",
    "scheme_class",
    "url_kwargs",
    "url_options",
]

Role = Literal["broker", "results"]


@dataclass(frozen=True, slots=True)
class Scheme:
    """One URL scheme: its broker and result-store classes (``module:Class``) and pip extra.

    ``path``: what the URL's path may hold: ``"none"`` (nothing, or ``/``), ``"db"`` (a
    Redis database number), ``"vhost"`` (a RabbitMQ virtual host: ``/name``, or ``//`` and
    ``/%2F`` for the default ``/``) or ``"file"`` (a file that several processes share, which
    also serves as the result store by default). ``remote``: it names a server (a host,
    maybe credentials).
    """

    broker: str
    results: str
    extra: str | None
    path: Literal["none", "db", "vhost", "file"]
    remote: bool

    @property
    def shared(self) -> bool:
        """Other processes use the same backend (a server or a file): one URL serves both
        roles, and one process's test clock must not skew it."""
        return self.remote or self.path == "file"


SCHEMES: dict[str, Scheme] = {
    "memory": Scheme(
        "taskflow.brokers.memory:MemoryBroker",
        "taskflow.results.memory:MemoryResultStore",
        None,
        "none",
        remote=False,
    ),
    "redis": Scheme(
        "taskflow.brokers.redis:RedisBroker",
        "taskflow.results.redis:RedisResultStore",
        "redis",
        "db",
        remote=True,
    ),
    "rediss": Scheme(
        "taskflow.brokers.redis:RedisBroker",
        "taskflow.results.redis:RedisResultStore",
        "redis",
        "db",
        remote=True,
    ),
    "nats": Scheme(
        "taskflow.brokers.nats:NatsBroker",
        "taskflow.results.nats:NatsResultStore",
        "nats",
        "none",
        remote=True,
    ),
    "tls": Scheme(
        "taskflow.brokers.nats:NatsBroker",
        "taskflow.results.nats:NatsResultStore",
        "nats",
        "none",
        remote=True,
    ),
    "sqlite": Scheme(
        "taskflow.brokers.sqlite:SqliteBroker",
        "taskflow.results.sqlite:SqliteResultStore",
        None,
        "file",
        remote=False,
    ),
    # RabbitMQ through kombu. No result store of its own: NoAmqpResults refuses to wait
    # and names the fix (``results="redis://..."``).
    "amqp": Scheme(
        "taskflow.brokers.kombu:KombuBroker",
        "taskflow.brokers._kombu_results:NoAmqpResults",
        "amqp",
        "vhost",
        remote=True,
    ),
    "amqps": Scheme(
        "taskflow.brokers.kombu:KombuBroker",
        "taskflow.brokers._kombu_results:NoAmqpResults",
        "amqp",
        "vhost",
        remote=True,
    ),
}
"""Every scheme this version can build, for both roles."""

SUPPORTED = ", ".join(f"{name}://" for name in SCHEMES)

# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed backend URL. ``options`` holds the query string (all values are strings).

    ``label`` says where the URL came from in messages (``"broker URL"``,
    ``"TASKFLOW_BROKER_URL"``).
    """

    raw: str
    scheme: str
    host: str | None
    port: int | None
    path: str
    username: str | None
    password: str | None
    options: dict[str, str]
    label: str = "URL"

    @property
    def masked(self) -> str:
        """The URL with its secrets replaced by ``***``."""
        return mask_url(self.raw)

    def without_query(self) -> str:
        """The URL for client libraries: no query string, the scheme in lower case."""
        rest = self.raw.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
        return f"{self.scheme}://{rest}"

    def error(self, problem: str) -> ConfigError:
        """A :class:`ConfigError` naming this URL (masked) and the problem."""
        return ConfigError(f"{self.label} {self.masked!r}: {problem}")


def parse_url(url: str, what: str = "broker", *, label: str | None = None) -> BackendURL:
    """Parse ``url`` strictly; :class:`ConfigError` names it (password masked).

    ``what`` (``"broker"``/``"results"``) or ``label`` says where it came from. This checks
    the syntax only; :func:`backend_class` checks it against its scheme.
    """
    label = label or f"{what} URL"
    if not isinstance(url, str):
        raise ConfigError(f"{label} must be a string such as 'redis://host:6379/0'")
    if "://" not in url:
        raise ConfigError(f"{label} {mask_url(url)!r} is malformed: expected scheme://...")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{label} {mask_url(url)!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"{label} {mask_url(url)!r} is malformed") from None
    if not parts.scheme:
        raise ConfigError(f"{label} {mask_url(url)!r} is malformed: missing scheme")
    # A password may hold '@', ':', '/'... only percent-encoded; an '@' after the host
    # means the password was not, and the host and path that urlsplit sees are wrong.
    if "@" in url.partition("://")[2][len(parts.netloc) :]:
        raise ConfigError(
            f"{label} {mask_url(url)!r} is malformed: percent-encode '@', '/', '?' and '#' "
            "in the user name and password (e.g. %40 for '@')"
        )
    try:
        port = parts.port
    except ValueError:
        # Not the library's message: it quotes the text it read as a port, which may be a
        # piece of a password.
        raise ConfigError(
            f"{label} {mask_url(url)!r} is malformed: the port must be a number 0-65535"
        ) from None
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"{label} {mask_url(url)!r} has a malformed query: {exc}") from None
    return BackendURL(
        raw=url,
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        path=parts.path,
        username=parts.username,
        password=parts.password,
        options=_options(pairs, url, label),
        label=label,
    )


def _options(pairs: list[tuple[str, str]], url: str, label: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise ConfigError(f"{label} {mask_url(url)!r}: option {name!r} is given twice")
        options[name] = value
    return options


# --------------------------------------------------------------------------- schemes


def load_backend(target: str, extra: str | None, url: BackendURL) -> Any:
    """Import ``module:attr``; a missing client library names the pip command to run."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise
        hint = f"pip install 'taskflow-queue[{extra}]'" if extra else "pip install taskflow-queue"
        raise url.error(f"{url.scheme}:// needs the {exc.name!r} package: run {hint}") from None
    return getattr(module, attr)


def scheme_of(url: BackendURL, role: Role) -> Scheme:
    """The :class:`Scheme` entry of ``url``; ConfigError for unknown and unbuilt schemes."""
    entry = SCHEMES.get(url.scheme)
    if entry is not None:
        return entry
    raise url.error(f"unknown {role} scheme {url.scheme!r}; supported: {SUPPORTED}")


def backend_class(url: BackendURL, role: Role) -> Any:
    """The class that serves ``url`` in ``role``, after checking the whole URL against it.

    Checked: the scheme, host/credentials/path for the scheme, every query option's name
    (the options of both roles where they share the URL) and value.
    """
    entry = scheme_of(url, role)
    own = load_backend(entry.broker if role == "broker" else entry.results, entry.extra, url)
    _check_location(url, entry)
    known = _known(url, entry, role)
    reject_unknown(url, set(known))
    for name, kind in known.items():
        if name in url.options:
            _convert(url, name, kind)
    return own


def backend_from_url(url: str, role: Role, *, clock: Any = None, label: str | None = None) -> Any:
    """The broker or result store (``role``) that ``url`` names, not connected yet.

    Everything the URL gets wrong is a :class:`ConfigError` naming ``label`` (default
    ``"broker URL"`` / ``"results URL"``). ``clock`` goes to in-process backends only: a
    backend on a server keeps the time every process of the app agrees on, which one
    process's test clock must not skew.
    """
    parsed = parse_url(url, role, label=label)
    cls = backend_class(parsed, role)
    return cls.from_url(url, clock=None if scheme_of(parsed, role).shared else clock)


def scheme_class(scheme: str, role: Role) -> Any:
    """The class serving ``scheme://`` URLs in ``role`` (imported on first use)."""
    entry = SCHEMES[scheme]
    return load_backend(
        entry.broker if role == "broker" else entry.results,
        entry.extra,
        parse_url(f"{scheme}://", role),
    )


def known_options(url: BackendURL, role: Role) -> set[str]:
    """The query options a URL of this scheme takes in ``role`` (for ``from_url``)."""
    return set(_known(url, scheme_of(url, role), role))


def _known(url: BackendURL, entry: Scheme, role: Role) -> dict[str, type]:
    own = load_backend(entry.broker if role == "broker" else entry.results, entry.extra, url)
    known = dict(url_options(own))
    if entry.shared:
        # The result store is built from the broker's URL by default: each takes both sets.
        partner = entry.results if role == "broker" else entry.broker
        for name, kind in url_options(load_backend(partner, entry.extra, url)).items():
            known.setdefault(name, kind)
    return known


def _check_location(url: BackendURL, entry: Scheme) -> None:
    path = url.path
    if not entry.remote and (url.host or url.port is not None or url.username or url.password):
        raise url.error(f"{url.scheme}:// takes no host or credentials: use {url.scheme}://")
    if entry.path == "db":
        if path not in ("", "/") and not re.fullmatch(r"/[0-9]+", path):
            raise url.error(
                "the path must be a database number such as /0 "
                f"(got {path!r}); e.g. {url.scheme}://host:6379/0"
            )
    elif entry.path == "file":
        if path in ("", "/"):
            raise url.error(
                "name the database file: sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
    elif entry.path == "vhost":
        if path != "//" and "/" in path[1:]:
            raise url.error(
                "the path is the virtual host: amqp://host:5672/name, or amqp://host:5672// "
                f"for the default '/' (got {path!r})"
            )
    elif path not in ("", "/"):
        raise url.error(f"{url.scheme}:// URLs take no path (got {path!r})")
    if urlsplit(url.raw).fragment:
        raise url.error("a URL fragment ('#...') is not allowed")


def amqp_vhost(path: str) -> str:
    """The RabbitMQ virtual host an ``amqp://`` URL's path names: ``""``, ``/``, ``//``
    and ``/%2F`` are the default ``/``; ``/name`` is ``name`` (percent-decoded)."""
    if path in ("", "/", "//"):
        return "/"
    return unquote(path[1:])


# --------------------------------------------------------------------------- options

_KINDS: dict[str, type] = {"str": str, "float": float, "int": int, "bool": bool}


def url_options(cls: type) -> dict[str, type]:
    """The query options ``cls`` takes: its keyword-only constructor parameters (except
    ``clock``) whose annotation is ``str``, ``float``, ``int`` or ``bool`` (optionally
    ``| None``)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return {}
    out: dict[str, type] = {}
    for param in params:
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name == "clock":
            continue
        annotation = param.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        parts = {part.strip() for part in str(text).split("|")} - {"None"}
        if len(parts) == 1 and (kind := _KINDS.get(parts.pop())) is not None:
            out[param.name] = kind
    return out


def url_kwargs(url: str, role: Role, cls: type) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that ``url``'s query gives, converted to their
    types; an option neither ``cls`` nor its partner on a shared URL takes is an error."""
    parsed = parse_url(url, role)
    reject_unknown(parsed, known_options(parsed, role))
    return {
        name: _convert(parsed, name, kind)
        for name, kind in url_options(cls).items()
        if name in parsed.options
    }


def _convert(url: BackendURL, name: str, kind: type) -> Any:
    if kind is float:
        return option_float(url, name, 0.0)
    if kind is int:
        return option_int(url, name, None)
    if kind is bool:
        return option_bool(url, name)
    raw = url.options[name]
    if not raw:
        raise url.error(f"option {name} must not be empty")
    return raw


def option_float(url: BackendURL, name: str, default: float) -> float:
    """A positive, finite float query option (seconds, usually)."""
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise url.error(f"option {name}={raw!r} must be a positive number, e.g. {name}=30")
    return value


def option_bool(url: BackendURL, name: str) -> bool | None:
    """A true/false query option (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    raw = url.options.get(name)
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise url.error(f"option {name}={raw!r} must be true or false")


def option_int(url: BackendURL, name: str, default: int | None) -> int | None:
    """A positive integer query option."""
    raw = url.options.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) <= 0:
        raise url.error(f"option {name}={raw!r} must be a positive integer, e.g. {name}=1000")
    return int(raw)


def reject_unknown(url: BackendURL, known: set[str]) -> None:
    """Unknown query options are an error, not silently ignored."""
    unknown = sorted(set(url.options) - known)
    if unknown:
        word = "option" if len(unknown) == 1 else "options"
        names = ", ".join(repr(name) for name in unknown)
        known_list = ", ".join(sorted(known)) or "none"
        raise url.error(f"unknown {word} {names}; known: {known_list}")
