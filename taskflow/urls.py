"""Backend URLs: parsing, validation and masking, in one place."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError, mask_url

__all__ = ["BackendURL", "load_backend", "parse_url"]


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed backend URL. ``options`` holds the query string (all values are strings)."""

    raw: str
    scheme: str
    host: str | None
    port: int | None
    path: str
    username: str | None
    password: str | None
    options: dict[str, str]

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return mask_url(self.raw)

    def without_query(self) -> str:
        """The URL without its query string (what client libraries get)."""
        return self.raw.split("?", 1)[0]


def parse_url(url: str, what: str = "broker") -> BackendURL:
    """Parse and sanity-check ``url``; :class:`ConfigError` names it (password masked)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"malformed {what} URL {mask_url(str(url))!r}: expected scheme://...")
    try:
        parts = urlsplit(url)
        port = parts.port
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    except ValueError as exc:
        raise ConfigError(f"malformed {what} URL {mask_url(url)!r}: {exc}") from None
    if not parts.scheme:
        raise ConfigError(f"malformed {what} URL {mask_url(url)!r}: missing scheme")
    return BackendURL(
        raw=url,
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        path=parts.path,
        username=parts.username,
        password=parts.password,
        options=options,
    )


def load_backend(target: str, extra: str | None, url: BackendURL) -> Any:
    """Import ``module:attr``; a missing client library names the pip command to run."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise
        hint = f"pip install 'taskflow-queue[{extra}]'" if extra else "pip install taskflow-queue"
        raise ConfigError(
            f"{url.scheme}:// needs the {exc.name!r} package ({url.masked}): run {hint}"
        ) from None
    return getattr(module, attr)


def option_float(url: BackendURL, name: str, default: float) -> float:
    """A positive float query option."""
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{url.masked}: option {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{url.masked}: option {name} must be positive")
    return value


def option_int(url: BackendURL, name: str, default: int | None) -> int | None:
    """A positive integer query option."""
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{url.masked}: option {name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigError(f"{url.masked}: option {name} must be positive")
    return value


def reject_unknown(url: BackendURL, known: set[str]) -> None:
    """Unknown query options are an error, not silently ignored."""
    unknown = sorted(set(url.options) - known)
    if unknown:
        known_list = ", ".join(sorted(known))
        raise ConfigError(
            f"{url.masked}: unknown option(s) {', '.join(unknown)}; known: {known_list}"
        )
