"""Names on NATS for arbitrary text: subject tokens and stream (consumer, bucket) names."""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_NAME", "stream_name", "subject_token", "untoken"]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def subject_token(text: str) -> str:
    """``text`` as one subject token: kept if plain, else ``=`` + hex (never ambiguous)."""
    return text if _PLAIN.fullmatch(text) else "=" + text.encode().hex()


def untoken(token: str) -> str:
    """The text a :func:`subject_token` stands for (ValueError if it stands for none)."""
    return bytes.fromhex(token[1:]).decode() if token.startswith("=") else token


MAX_NAME = 255
"""The longest stream or consumer name a JetStream server takes."""


def stream_name(text: str, room: int = 0) -> str:
    """A name valid for streams, consumers and KV buckets (plain, or a stable hash),
    leaving ``room`` characters for what is added around it: plain text too long for
    that is hashed as well (a name that long was refused by the server, so no name that
    worked before changes)."""
    if _PLAIN.fullmatch(text) and len(text) + room <= MAX_NAME:
        return text
    return "h" + hashlib.sha1(text.encode()).hexdigest()[:16]
