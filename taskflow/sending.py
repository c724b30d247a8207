"""From a call to an envelope: option checks, envelope building and what a send writes.

``App._prepare`` is :func:`prepare`; the enqueue pipeline (:mod:`taskflow.enqueue`) turns
the prepared envelopes into queued records, broker messages and ``queued`` events with the
helpers at the end of this module.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import codec
from .brokers.base import Message
from .errors import PayloadError
from .message import Envelope, TaskStatus
from .middleware import TaskEvent
from .options import SERIALIZERS, TaskOptions, check_priority, check_queue, check_timeout
from .payload import encode_any
from .task import CALL_OPTIONS, Signature

if TYPE_CHECKING:
    from .app import App
    from .task import Task

__all__ = [
    "Prepared",
    "check_call_options",
    "max_deliveries_for",
    "message_for",
    "prepare",
    "prepare_many",
    "queued_event",
    "queued_record",
]


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
    app: App,
    name: str,
    task: Task[Any, Any] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    opts: Mapping[str, Any],
) -> Prepared:
    """Check the call options and encode the arguments of one send (``App._prepare``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {type(name).__name__}")
    topts = task.options if task is not None else TaskOptions()
    if opts.get("queue") is not None:
        queue = check_queue(opts["queue"], name)  # an empty name is an error, not a default
    else:
        queue = topts.queue or app.default_queue
    priority = check_priority(opts["priority"], name) if "priority" in opts else topts.priority
    if "retries" in opts:
        retries = TaskOptions.build(name, {"retries": opts["retries"]}).retries
    else:
        retries = topts.retries
    timeout = check_timeout(opts["timeout"], name) if "timeout" in opts else topts.timeout
    if task is not None:
        enc_args, enc_kwargs = task.schema.encode_args(tuple(args), dict(kwargs))
    else:
        enc_args, enc_kwargs = _encode_untyped(name, args, kwargs)
    _check_depth(name, enc_args, enc_kwargs)
    now = app.clock.time()
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
        max_retries=app.default_retries if retries is None else retries,
        timeout=timeout if timeout is not None else app.default_timeout,
        idempotency_key=_opt_str(name, "idempotency_key", opts.get("idempotency_key")),
        headers=_headers(name, opts.get("headers")),
        canvas=opts.get("canvas"),
        parent_id=opts.get("parent_id"),
        root_id=opts.get("root_id"),
        content_type=SERIALIZERS[topts.serializer],
    )
    digest = None
    if env.idempotency_key is not None:
        digest = hashlib.sha256(codec.dumps([name, enc_args, enc_kwargs])).hexdigest()
    store = topts.store_result if task is not None else True
    return Prepared(env, store, digest, "task_id" in opts)


def prepare_many(app: App, signatures: Iterable[Signature]) -> list[Prepared]:
    """:func:`prepare` each signature of an ``enqueue_many`` call."""
    out = []
    for sig in signatures:
        if not isinstance(sig, Signature):
            raise TypeError(f"enqueue_many takes signatures (task.s(...)), got {sig!r}")
        check_call_options(sig.name, sig.options)
        out.append(
            prepare(
                app, sig.name, app.registry.get(sig.name), sig.args, sig.kwargs, opts=sig.options
            )
        )
    return out


def check_call_options(name: str, options: Mapping[str, Any]) -> None:
    """Reject options that ``apply_async`` (or the canvas) does not know."""
    unknown = set(options) - CALL_OPTIONS - {"canvas", "parent_id", "root_id"}
    if unknown:
        raise ValueError(f"{name}: unknown option(s): {', '.join(sorted(unknown))}")


def _task_id(name: str, value: Any) -> str:
    if value is None:
        return str(uuid.uuid4())
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: task_id must be a non-empty string")
    return value


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
        if (
            isinstance(countdown, bool)
            or not isinstance(countdown, int | float)
            or not math.isfinite(countdown)
            or countdown < 0
        ):
            raise ValueError(f"{name}: countdown must be a finite, non-negative number of seconds")
        return now + float(countdown) if countdown > 0 else None
    if eta is not None:
        return _aware_ts(name, "eta", eta)
    return None


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
    return record


def max_deliveries_for(app: App, name: str) -> int:
    """How many deliveries of one attempt of task ``name`` the broker makes.

    A delivery lost with its worker does not spend a retry: the broker delivers the same
    attempt again, up to the app's ``max_deliveries``. A task declared ``on_lost="fail"``
    gets one delivery (it is dead-lettered ``worker_lost`` at the first loss).
    """
    task = app.registry.get(name)
    if task is not None and task.options.on_lost == "fail":
        return 1
    return app.max_deliveries


def message_for(env: Envelope, app: App) -> Message:
    """The broker message for an envelope of ``app``."""
    return Message(
        id=env.id,
        queue=env.queue,
        body=codec.encode_envelope(env),
        priority=env.priority,
        eta=env.eta,
        max_deliveries=max_deliveries_for(app, env.task),
        task=env.task,
    )


def queued_event(env: Envelope) -> TaskEvent:
    """The ``queued`` hook event of a sent envelope."""
    status = TaskStatus.SCHEDULED if env.eta is not None else TaskStatus.QUEUED
    return TaskEvent(
        "queued", env.id, env.task, env.queue, status.value, env.attempt, timestamp=env.created_at
    )
