"""Names on NATS for arbitrary text: subject tokens and stream (consumer, bucket) names."""

from __future__ import annotations

import hashlib
import re

__all__ = ["stream_name", "subject_token", "untoken"]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def subject_token(text: str) -> str:
    """``text`` as one subject token: kept if plain, else ``=`` + hex (never ambiguous)."""
    return text if _PLAIN.fullmatch(text) else "=" + text.encode().hex()


def untoken(token: str) -> str:
    """The text a :func:`subject_token` stands for (ValueError if it stands for none)."""
    return bytes.fromhex(token[1:]).decode() if token.startswith("=") else token


def stream_name(text: str) -> str:
    """A name valid for streams, consumers and KV buckets (plain, or a stable hash)."""
    return text if _PLAIN.fullmatch(text) else "h" + hashlib.sha1(text.encode()).hexdigest()[:16]
