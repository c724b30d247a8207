"""From a call to an envelope, without I/O: option checks, envelope building, and what a
send writes (the queued record, the broker message, the ``queued`` event).

The per-call options are declared once, as :class:`CallOptions`; :data:`CALL_OPTIONS`, the
names ``apply_async`` and ``Signature.set`` accept, is derived from it. ``link`` and
``link_error`` are turned into the envelope's ``canvas`` by the canvas layer before a call
reaches :func:`prepare`, which never sees signatures. A send made from inside a running task
takes that task as its parent (lineage: ``parent_id``, ``root_id``) unless the options say.
The enqueuer (:mod:`.enqueue`) takes the :class:`Prepared` sends from here to the backends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

from .. import codec
from ..brokers.base import Message
from ..context import current_task
from ..errors import PayloadError
from ..eventbus import TaskEvent
from ..message import Envelope, TaskStatus
from ..options import (
    MAX_DELAY,
    SERIALIZERS,
    TaskOptions,
    check_priority,
    check_queue,
    check_task_id,
    check_timeout,
    countdown_problem,
)
from ..payload import encode_any
from .settings import Settings
from .taskdef import TaskDef

__all__ = [
    "CALL_OPTIONS",
    "SEND_OPTIONS",
    "CallOptions",
    "Prepared",
    "SendOptions",
    "check_call_options",
    "check_call_values",
    "message_for",
    "new_task_id",
    "prepare",
    "queued_event",
    "queued_record",
]


class CallOptions(TypedDict, total=False):
    """The per-call options of ``apply_async``, as ``Task.with_options`` takes them."""

    queue: str
    priority: int
    countdown: float
    eta: datetime
    expires: float | datetime
    task_id: str
    idempotency_key: str
    retries: int
    timeout: float
    headers: dict[str, str]
    link: Any
    """A signature or a list of them, sent with the result once the task succeeded."""
    link_error: Any
    """A signature or a list of them, sent with the task id once it failed for good."""


class SendOptions(CallOptions, total=False):
    """:class:`CallOptions` plus what the canvas sets on the steps it sends."""

    canvas: dict[str, Any]
    parent_id: str
    root_id: str


CALL_OPTIONS = frozenset(CallOptions.__optional_keys__)
"""The option names a caller may give (``apply_async``, ``Signature.set``)."""

SEND_OPTIONS = frozenset(SendOptions.__optional_keys__)
"""Every option :func:`prepare` reads."""

_EMPTY_OPTIONS = TaskOptions()


class Prepared:
    """One checked send: its envelope and how to record it."""

    __slots__ = ("digest", "envelope", "explicit_id", "store_result")

    def __init__(
        self, envelope: Envelope, store_result: bool, digest: str | None, explicit_id: bool
    ) -> None:
        self.envelope = envelope
        self.store_result = store_result
        self.digest = digest
        self.explicit_id = explicit_id  # the caller chose the task id (it may be taken)


def prepare(
    settings: Settings,
    name: str,
    task: TaskDef | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    opts: Mapping[str, Any],
) -> Prepared:
    """Check the call options and encode the arguments of one send of task ``name``
    (``task``: its definition when it is registered here; typed encoding then)."""
    if not opts and task is not None and name is task.name:
        return _prepare_plain(settings, task, args, kwargs)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {type(name).__name__}")
    if not name.isprintable():
        # Names travel in logs and broker headers: a newline forges a log line, and NATS
        # cannot carry it in a header at all.
        raise ValueError(f"a task name must be printable text, got {name!r}")
    if "link" in opts or "link_error" in opts:
        # Callbacks are compiled into ``canvas`` by the canvas layer; never drop them here.
        raise ValueError(
            f"{name}: link/link_error are taken by apply_async, send_task and signatures"
        )
    topts = task.options if task is not None else _EMPTY_OPTIONS
    if opts.get("queue") is not None:
        queue = check_queue(opts["queue"], name)  # an empty name is an error, not a default
    else:
        queue = topts.queue or settings.default_queue
    priority = check_priority(opts["priority"], name) if "priority" in opts else topts.priority
    if "retries" in opts:
        retries = TaskOptions.build(name, {"retries": opts["retries"]}).retries
    else:
        retries = topts.retries
    timeout = check_timeout(opts["timeout"], name) if "timeout" in opts else topts.timeout
    parent_id, root_id = _lineage(opts)
    if task is not None:
        enc_args, enc_kwargs = task.schema.encode_args(tuple(args), dict(kwargs))
    else:
        enc_args, enc_kwargs = _encode_untyped(name, args, kwargs)
    _check_depth(name, enc_args, enc_kwargs)
    now = settings.clock.time()
    eta = _eta(name, opts, now)
    env = Envelope(
        id=_task_id(name, opts.get("task_id")),
        task=name,
        queue=queue,
        args=enc_args,
        kwargs=enc_kwargs,
        priority=priority,
        created_at=now,
        eta=eta,
        expires=_expires(name, opts.get("expires"), now),
        max_retries=settings.default_retries if retries is None else retries,
        timeout=timeout if timeout is not None else settings.default_timeout,
        idempotency_key=_opt_str(name, "idempotency_key", opts.get("idempotency_key")),
        headers=_headers(name, opts.get("headers")),
        canvas=opts.get("canvas"),
        parent_id=parent_id,
        root_id=root_id,
        content_type=SERIALIZERS[topts.serializer],
    )
    digest = None
    if env.idempotency_key is not None:
        digest = hashlib.sha256(codec.dumps([name, enc_args, enc_kwargs])).hexdigest()
    store = topts.store_result if task is not None else True
    return Prepared(env, store, digest, "task_id" in opts)


def _prepare_plain(
    settings: Settings, task: TaskDef, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Prepared:
    """:func:`prepare` of a registered task without call options (``delay()``): the
    task's options need no checks (they were checked when it was declared)."""
    topts = task.options
    name = task.name
    enc_args, enc_kwargs = task.schema.encode_args(tuple(args), dict(kwargs))
    if enc_args or enc_kwargs:
        _check_depth(name, enc_args, enc_kwargs)
    ctx = current_task()
    parent_id, root_id = (None, None) if ctx is None else (ctx.id, ctx.root_id or ctx.id)
    retries, timeout = topts.retries, topts.timeout
    env = Envelope(
        id=new_task_id(),
        task=name,
        queue=topts.queue or settings.default_queue,
        args=enc_args,
        kwargs=enc_kwargs,
        priority=topts.priority,
        created_at=settings.clock.time(),
        max_retries=settings.default_retries if retries is None else retries,
        timeout=timeout if timeout is not None else settings.default_timeout,
        parent_id=parent_id,
        root_id=root_id,
        content_type=SERIALIZERS[topts.serializer],
    )
    return Prepared(env, topts.store_result, None, False)


def _lineage(opts: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(parent_id, root_id)``: as given (the canvas sets both), else the running task's."""
    if "parent_id" in opts or "root_id" in opts:
        return opts.get("parent_id"), opts.get("root_id")
    ctx = current_task()
    if ctx is None:
        return None, None
    return ctx.id, ctx.root_id or ctx.id


def check_call_options(name: str, options: Mapping[str, Any], known: frozenset[str]) -> None:
    """Reject options not in ``known`` (:data:`CALL_OPTIONS` or :data:`SEND_OPTIONS`)."""
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"{name}: unknown option(s): {', '.join(sorted(unknown))}")


_ID_BATCH = 128  # ids drawn from one read of the system's random source
_fresh_ids: list[str] = []
# The child of a fork must not hand out the ids its parent holds (or will hand out).
os.register_at_fork(after_in_child=_fresh_ids.clear)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_task_id() -> str:
    """A new random (version 4) UUID as a string, as ``str(uuid.uuid4())``.

    The 122 random bits come from ``os.urandom`` as in :func:`uuid.uuid4`, read for
    :data:`_ID_BATCH` ids at a time: a system call and a ``UUID`` object per id cost
    about as much as the rest of a ``delay()``'s preparation. Taking one is
    ``list.pop``, atomic between threads; a forked child drops its parent's unused ids."""
    try:
        return _fresh_ids.pop()
    except IndexError:
        pass
    raw = os.urandom(16 * _ID_BATCH).hex()
    variant = _VARIANT
    batch = [
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"
        for h in (raw[i : i + 32] for i in range(0, len(raw), 32))
    ]
    mine = batch.pop()
    _fresh_ids.extend(batch)
    return mine


def _task_id(name: str, value: Any) -> str:
    if value is None:
        return new_task_id()
    return check_task_id(value, name, sending=True)


def _check_depth(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    # The protocol bounds nesting (docs/protocol.md, section 2): refuse here what a worker
    # would dead-letter as undecodable.
    for index, value in enumerate(args):
        if codec.too_deep(value):
            raise PayloadError(
                f"{name}(argument {index + 1}): nested deeper than {codec.MAX_DEPTH} levels"
            )
    for key, value in kwargs.items():
        if codec.too_deep(value):
            raise PayloadError(f"{name}({key}): nested deeper than {codec.MAX_DEPTH} levels")


def _encode_untyped(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    try:
        return [encode_any(a) for a in args], {k: encode_any(v) for k, v in kwargs.items()}
    except PayloadError as exc:
        raise PayloadError(f"{name}: {exc}") from None


def _eta(name: str, opts: Mapping[str, Any], now: float) -> float | None:
    countdown, eta = opts.get("countdown"), opts.get("eta")
    if countdown is not None and eta is not None:
        raise ValueError(f"{name}: give countdown or eta, not both")
    if countdown is not None:
        problem = countdown_problem(countdown) or ("is negative" if countdown < 0 else "")
        if problem:
            raise ValueError(f"{name}: countdown {problem}")
        return now + float(countdown) if countdown > 0 else None
    if eta is not None:
        at = _aware_ts(name, "eta", eta)
        if at - now > MAX_DELAY:
            raise ValueError(f"{name}: eta {eta.isoformat()} is more than 100 years ahead")
        return at
    return None


def check_call_values(name: str, opts: Mapping[str, Any], now: float) -> None:
    """Check the values of call options as a send of task ``name`` would, sending nothing
    (a signature's ``set()``: a bad value fails where it is written, not where its canvas
    is applied). An option set to None is left to the send."""
    given = {k: v for k, v in opts.items() if v is not None}
    if "queue" in given:
        check_queue(given["queue"], name)
    if "priority" in given:
        check_priority(given["priority"], name)
    if "retries" in given:
        TaskOptions.build(name, {"retries": given["retries"]})
    if "timeout" in given:
        check_timeout(given["timeout"], name)
    _eta(name, given, now)
    _expires(name, given.get("expires"), now)
    if "task_id" in given:
        _task_id(name, given["task_id"])
    _opt_str(name, "idempotency_key", given.get("idempotency_key"))
    _headers(name, given.get("headers"))


def _aware_ts(name: str, option: str, value: Any) -> float:
    if not isinstance(value, datetime):
        raise ValueError(f"{name}: {option} must be a timezone-aware datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: {option} must be timezone-aware (got a naive datetime)")
    return value.timestamp()


def _expires(name: str, value: Any, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware_ts(name, "expires", value)
    return now + (check_timeout(value, name, "expires") or 0.0)


def _opt_str(name: str, option: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {option} must be a non-empty string")
    return value


def _headers(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name}: headers must map str to str")
    return dict(value)


def queued_record(env: Envelope) -> dict[str, Any]:
    """The result record a send creates (``queued``, or ``scheduled`` with an eta)."""
    status = TaskStatus.SCHEDULED if env.eta is not None else TaskStatus.QUEUED
    record = {
        "id": env.id,
        "name": env.task,
        "status": status.value,
        "queue": env.queue,
        "priority": env.priority,
        "attempts": 0,
        "created_at": env.created_at,
    }
    if env.eta is not None:
        record["eta"] = env.eta
    if env.canvas:
        record["canvas"] = True
    if env.root_id is not None:
        record["root_id"] = env.root_id
    if env.parent_id is not None:
        record["parent_id"] = env.parent_id
    return record


def message_for(env: Envelope, max_deliveries: int) -> Message:
    """The broker message for ``env``, delivered at most ``max_deliveries`` times per
    attempt (see ``Kernel.max_deliveries``)."""
    body = codec.encode_envelope(env)
    # Positional (id, queue, body, priority, eta, max_deliveries, task): one per send.
    return Message(env.id, env.queue, body, env.priority, env.eta, max_deliveries, env.task)


def queued_event(env: Envelope) -> TaskEvent:
    """The ``queued`` hook event of a sent envelope."""
    status = TaskStatus.SCHEDULED if env.eta is not None else TaskStatus.QUEUED
    return TaskEvent(
        "queued",
        env.id,
        env.task,
        env.queue,
        status.value,
        env.attempt,
        timestamp=env.created_at,
        root_id=env.root_id,
        parent_id=env.parent_id,
    )
