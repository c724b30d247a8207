"""Compiling a canvas into specs, and applying it.

Applying a canvas compiles it once, in the producer, into a tree of JSON *specs* with every
id assigned up front (task ids, chain ids, group ids), so result handles exist before any
step runs and every later publish is deterministic. Spec shapes::

    {"k": "t", "id": ..., "name": ..., "args": [...], "kwargs": {...}, "opts": {...},
     "im": bool, "cb": {...}}                             # one task (a Signature)
    {"k": "c", "id": ..., "steps": [spec, ...]}           # a chain
    {"k": "g", "id": ..., "members": [spec, ...]}         # a group

A chord is ``chain(group(header), body)``. A task with callbacks carries ``"cb"``:
``{"link": [entry, ...], "link_error": [entry, ...]}``, an entry being
``{"spec": spec, "records": [[id, record], ...]}`` (the records of a callback that is itself a
canvas, created when it is sent); the same entries ride in the envelope's ``canvas`` of a task
sent with ``link=``/``link_error=``. Arguments of steps that are sent later travel as
untyped JSON (:func:`taskflow.payload.encode_any`); values that would not survive that trip
(dataclasses, enums, models) are rejected when the canvas is applied, not when the step is due.

Each node of a canvas builds its own spec by calling back into the :class:`Compiler`
(``node.build_spec(compiler, root)``), so this module needs no import of the node classes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..context import current_task
from ..errors import PayloadError
from ..kernel import SEND_OPTIONS, Kernel, check_call_options
from ..payload import decode_any, encode_any
from ..results.handle import AsyncResult
from .advance import apply_spec
from .results import ChainResult, ChordResult, GroupResult, ResultHandle
from .state import chain_record, group_record

__all__ = ["Compiler", "Node", "Spec", "apply"]

Spec = dict[str, Any]


class Node(Protocol):
    """A signature or a canvas: something that compiles into a spec."""

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]: ...


def apply(kernel: Kernel, node: Node) -> Any:
    """Send ``node``: write its canvas records, start its root; returns its handle."""
    compiler = Compiler(kernel)
    spec, handle = node.build_spec(compiler, True)
    # The sending task (if this runs inside one) is the canvas's parent; the loop thread
    # that sends does not see this thread's current task, so it is read here.
    ctx = current_task()
    caller = None if ctx is None else (ctx.id, ctx.root_id or ctx.id)
    kernel.call(apply_spec(kernel, spec, compiler.records, caller))
    return handle


def _untyped(name: str, what: str, value: Any) -> Any:
    """``value`` as JSON that decodes back to an equal value of the same type, or raise."""
    try:
        wire = encode_any(value)
    except PayloadError as exc:
        raise PayloadError(f"{name}: {what}: {exc}") from None
    back = decode_any(wire)
    if type(back) is not type(value) or back != value:
        raise PayloadError(
            f"{name}: {what} is a {type(value).__name__}, which cannot wait inside a canvas "
            "(send it as the previous step's result, or pass plain JSON values)"
        )
    return wire


class Compiler:
    """Turns a canvas tree into specs with fresh ids, plus the canvas records to write."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.now = kernel.clock.time()
        self.records: list[tuple[str, dict[str, Any]]] = []

    def task(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        immutable: bool,
        *,
        callbacks: Mapping[str, Sequence[Node]] | None = None,
    ) -> tuple[Spec, ResultHandle]:
        """One task's spec (checked against its parameters: fully when it ignores its
        parent, for what a parent's result cannot mend otherwise), with its
        ``link``/``link_error`` ``callbacks`` compiled."""
        check_call_options(name, options, SEND_OPTIONS)
        opts = dict(options)
        task_id = str(opts.pop("task_id", None) or uuid.uuid4())
        task = self.kernel.registry.get(name)
        if task is not None and immutable:
            task.schema.bind_check(args, dict(kwargs))
        elif task is not None:
            task.schema.check_partial(args, kwargs)
        spec = {
            "k": "t",
            "id": task_id,
            "name": name,
            "args": [_untyped(name, f"argument {i}", a) for i, a in enumerate(args)],
            "kwargs": {k: _untyped(name, f"argument {k!r}", v) for k, v in kwargs.items()},
            "opts": _untyped(name, "options", opts),
            "im": immutable,
        }
        if callbacks:
            spec["cb"] = self.callbacks(callbacks)
        return spec, AsyncResult(self.kernel, task_id, name)

    def callbacks(self, nodes: Mapping[str, Sequence[Node]]) -> dict[str, Any]:
        """``{"link": [entry, ...], "link_error": [...]}`` for callback nodes by option;
        each entry keeps the records of its own canvas (written when it is sent)."""
        out: dict[str, Any] = {}
        for option, items in nodes.items():
            entries = []
            for node in items:
                sub = Compiler(self.kernel)
                spec, _ = node.build_spec(sub, False)
                entries.append({"spec": spec, "records": [[i, r] for i, r in sub.records]})
            out[option] = entries
        return out

    def group(self, members: Sequence[Node], root: bool) -> tuple[Spec, ResultHandle]:
        """A group's spec and record."""
        gid = str(uuid.uuid4())
        built = [m.build_spec(self, False) for m in members]
        specs = [s for s, _ in built]
        self.records.append((gid, group_record(gid, specs, self.now, root)))
        handle = GroupResult(self.kernel, gid, [h for _, h in built])
        return {"k": "g", "id": gid, "members": specs}, handle

    def chain(self, steps: Sequence[Node], root: bool, *, chord: bool) -> tuple[Spec, ResultHandle]:
        """A chain's (or chord's) spec and record."""
        cid = str(uuid.uuid4())
        built = [s.build_spec(self, False) for s in steps]
        specs = [s for s, _ in built]
        self.records.append((cid, chain_record(cid, specs, self.now, root, chord=chord)))
        cls = ChordResult if chord else ChainResult
        return {"k": "c", "id": cid, "steps": specs}, cls(self.kernel, cid, [h for _, h in built])
