"""What a taskflow message on NATS says about itself, read without trusting it.

A work message's subject is ``P.q.<queue>.p<level>.<id>``, a delayed one's
``P.d.<queue>.<id>``; ``Tf-*`` headers carry the rest. Anything malformed is a ValueError
naming what is wrong (never a value): a foreign producer's bad header or subject token must
dead-letter that one message, not fail a whole fetch.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from .names import untoken

__all__ = ["Framing", "delivery_numbers", "framing", "pull_status", "raw_headers"]

_COUNT = re.compile(r"[0-9]{1,18}")


class Framing(NamedTuple):
    """What a pulled message's subject and ``Tf-*`` headers say about it."""

    queue: str
    id: str
    priority: int
    base: int
    """Deliveries made before this copy was published (``Tf-Base``)."""
    max_deliveries: int
    eta: float | None


def _count(headers: dict[str, str], name: str, default: int, least: int) -> int:
    text = headers.get(name)
    if text is None:
        return default
    if not _COUNT.fullmatch(text) or int(text) < least:
        raise ValueError(f"header {name} is not an integer >= {least}")
    return int(text)


def framing(msg: Msg) -> Framing:
    """Parse a work (``P.q.<queue>.p<level>.<id>``) or delay (``P.d.<queue>.<id>``) message;
    ValueError naming what is malformed."""
    parts = msg.subject.split(".")
    headers = msg.headers or {}
    work = len(parts) == 5 and parts[1] == "q"
    if not work and not (len(parts) == 4 and parts[1] == "d"):
        raise ValueError("the subject does not have the layout of a work or delay message")
    try:
        queue, mid = untoken(parts[2]), untoken(parts[-1])
    except ValueError:
        raise ValueError("a subject token is not plain nor '=' + the hex of UTF-8") from None
    eta: float | None = None
    if work:
        level = parts[3]
        if not (len(level) == 2 and level[0] == "p" and level[1].isdigit()):
            raise ValueError("the priority token is not p0-p9")
        priority = int(level[1])
    else:
        priority = _count(headers, "Tf-Pri", 0, 0)
        if priority > 9:
            raise ValueError("header Tf-Pri is not an integer 0-9")
        try:
            eta = float(headers.get("Tf-Eta", ""))
        except ValueError:
            raise ValueError("header Tf-Eta is not a number") from None
        if not math.isfinite(eta):
            raise ValueError("header Tf-Eta is not a finite number")
    base = _count(headers, "Tf-Base", 0, 0)
    return Framing(queue, mid, priority, base, _count(headers, "Tf-Max", 1, 1), eta)


def delivery_numbers(msg: Msg) -> tuple[int, int]:
    """(deliveries so far, stream sequence) of a pulled message.

    Read from the ack subject ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<...>``
    that nats-server 2.9 sends; nats-py's ``metadata`` reads the same and builds a datetime
    and two dataclasses per message besides. Other forms (with a JetStream domain) go
    through ``metadata``.
    """
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]), int(tokens[5])
    metadata = msg.metadata
    return metadata.num_delivered, metadata.sequence.stream


def pull_status(msg: Msg) -> str | None:
    """The status of a pull-request reply (``404``, ``408``...), None for a real message."""
    return msg.headers.get("Status") if msg.headers and not msg.data else None


def raw_headers(raw: dict[str, Any]) -> dict[str, str]:
    """The headers of a message read back through the stream API (``STREAM.MSG.GET``),
    which returns them as the base64 of the NATS/1.0 header block."""
    headers: dict[str, str] = {}
    if raw.get("hdrs"):
        lines = base64.b64decode(raw["hdrs"]).decode().split("\r\n")[1:]
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
    return headers
