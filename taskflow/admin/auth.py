"""Who may use the admin service: bearer tokens from a file, login sessions, CSRF tokens.

The token file has one token per line, ``name:token`` or ``name:token:read-only``; blank
lines and lines starting with ``#`` are skipped. Tokens are kept only as sha256 digests and
compared in constant time. A session (pages) is a random id in an HttpOnly cookie that maps,
in this process's memory, to the caller and a per-session CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["Principal", "Session", "SessionStore", "TokenStore", "csrf_ok"]

READ_ONLY = "read-only"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the name the audit trail records, and its role."""

    name: str
    read_only: bool


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """Bearer tokens by sha256 digest; :meth:`check` finds the caller of a token."""

    def __init__(self, entries: Iterable[tuple[str, str, bool]] = ()) -> None:
        """Tokens from ``(name, token, read_only)`` triples."""
        self._entries: list[tuple[bytes, Principal]] = []
        for name, token, read_only in entries:
            self.add(name, token, read_only=read_only)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, name: str, token: str, *, read_only: bool = False) -> None:
        """Accept ``token`` as ``name`` (read-only or not)."""
        if not name or not token:
            raise ConfigError("a token needs a name and a non-empty secret")
        if not name.isprintable():
            # The name is the actor of the audit trail and its log lines.
            raise ConfigError(f"a token's name must be printable text, got {name!r}")
        self._entries.append((_digest(token), Principal(name, read_only)))

    @classmethod
    def from_file(cls, path: str | Path) -> TokenStore:
        """Tokens from a file of ``name:token[:read-only]`` lines (ConfigError names the
        file and line of a bad one; the token itself is never repeated)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read token file {str(path)!r}: {exc.strerror}") from None
        store = cls()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            role_ok = len(parts) == 2 or (len(parts) == 3 and parts[2] == READ_ONLY)
            if not role_ok or not parts[0] or not parts[1]:
                raise ConfigError(
                    f"token file {str(path)!r} line {number}: expected name:token"
                    f" or name:token:{READ_ONLY}"
                )
            try:
                store.add(parts[0], parts[1], read_only=len(parts) == 3)
            except ConfigError as exc:
                raise ConfigError(f"token file {str(path)!r} line {number}: {exc}") from None
        if not store:
            raise ConfigError(f"token file {str(path)!r} holds no token")
        return store

    def check(self, token: str) -> Principal | None:
        """The caller ``token`` belongs to, or None. Every entry is compared (in constant
        time each), so the time taken does not tell which one matched."""
        digest = _digest(token)
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = principal
        return found


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: who, its CSRF token, and when it expires (epoch seconds)."""

    principal: Principal
    csrf: str
    expires: float


class SessionStore:
    """Login sessions in memory (a restart logs everyone out)."""

    def __init__(self, ttl: float = 8 * 3600.0) -> None:
        """Sessions that last ``ttl`` seconds from login."""
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal, now: float) -> tuple[str, Session]:
        """A new session id (the cookie value) and its session."""
        sid = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now + self.ttl)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None, now: float) -> Session | None:
        """The live session of cookie value ``sid``, or None."""
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
        if session is None or session.expires <= now:
            return None
        return session

    def drop(self, sid: str | None) -> None:
        """Log a session out."""
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)


def csrf_ok(expected: str, given: object) -> bool:
    """Whether a form's CSRF field matches the session's token (constant time)."""
    return isinstance(given, str) and bool(given) and hmac.compare_digest(expected, given)
