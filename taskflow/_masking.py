"""Masking the secrets of a URL, for every message, log line and ``repr`` that shows one;
escaping text a message brought, for the log lines that show it.

Below everything else (it imports nothing of taskflow), so that :mod:`taskflow.errors`
and :mod:`taskflow.urls` both offer :func:`mask_url` without importing each other.
"""

from __future__ import annotations

import re

__all__ = ["mask_url", "shown"]

# Query options whose values are masked, by name. Options naming a file
# (``password_file``, ``tls_key_file``) hold a path, not the secret: they stay readable.
_SECRET_QUERY = re.compile(r"(?i)(pass|secret|token|auth|key)(?!\w*_file$)")


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: safe for messages, logs and ``repr``.

    Masked: a password (``user:***@``), a lone userinfo (``***@``, a NATS token), and
    query values whose name looks secret (``password=***``). A URL whose password holds
    an unencoded ``/``, ``?`` or ``#`` cannot be split reliably: everything up to its last
    ``@`` is masked then.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    authority_end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index >= 0:
            authority_end = min(authority_end, index)
    at = rest.rfind("@")
    if at >= authority_end:
        # An '@' past the authority: a password with an unencoded delimiter (or an '@' in
        # the query). Mask generously: over-masking a bad URL costs nothing.
        rest = "***" + rest[at:]
    elif at >= 0:
        userinfo, host = rest[:at], rest[at:]
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else "***") + host
    masked = head + sep + rest
    return _mask_query(masked)


def _mask_query(url: str) -> str:
    base, qmark, query = url.partition("?")
    if not qmark or not _SECRET_QUERY.search(query):
        return url
    query, hashmark, fragment = query.partition("#")
    items = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        items.append(f"{name}=***" if eq and _SECRET_QUERY.search(name) else item)
    return base + qmark + "&".join(items) + hashmark + fragment


def shown(text: str) -> str:
    """``text`` for a log line: as it is when printable, else with its control characters
    escaped (``\\n``, ``\\x1b``), so that an id or name from the wire cannot forge a line
    or send a terminal escape."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
