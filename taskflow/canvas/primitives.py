"""``group``, ``chain`` and ``chord``: canvases built from signatures, sent as data.

Applying a canvas compiles it once, in the producer, into a tree of JSON *specs* with every
id assigned up front (task ids, chain ids, group ids), so result handles exist before any
step runs and every later publish is deterministic. Spec shapes::

    {"k": "t", "id": ..., "name": ..., "args": [...], "kwargs": {...}, "opts": {...},
     "im": bool}                                          # one task (a Signature)
    {"k": "c", "id": ..., "steps": [spec, ...]}           # a chain
    {"k": "g", "id": ..., "members": [spec, ...]}         # a group

A chord is ``chain(group(header), body)``. Arguments of steps that are sent later travel as
untyped JSON (:func:`taskflow.payload.encode_any`); values that would not survive that trip
(dataclasses, enums, models) are rejected when the canvas is applied, not when the step is due.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import PayloadError
from ..payload import decode_any, encode_any
from ..results.handle import AsyncResult
from ..task import Signature
from .results import ChainResult, ChordResult, GroupResult, ResultHandle
from .state import chain_record, group_record

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Canvas", "chain", "chord", "group"]


class Canvas:
    """Base of ``group``, ``chain`` and ``chord``: compose with ``|``, send with
    ``apply_async()``."""

    def _app(self) -> App | None:
        raise NotImplementedError

    def __or__(self, other: Signature | Canvas) -> chain:
        return chain(self, other)

    def __ror__(self, other: Signature) -> chain:
        return chain(other, self)

    def delay(self) -> Any:
        """Same as ``apply_async()``."""
        return self.apply_async()

    def apply_async(self, *, app: App | None = None) -> Any:
        """Send the canvas; returns its result handle."""
        target = app or self._app()
        if target is None:
            raise ValueError(f"{self!r} has no task to take an App from; pass app=")
        compiled = _Compiler(target)
        spec, handle = compiled.node(self, root=True)
        from .advance import apply_spec

        target._call(apply_spec(target, spec, compiled.records))
        return handle


def _members(items: tuple[Any, ...], what: str) -> list[Signature | Canvas]:
    if (
        len(items) == 1
        and not isinstance(items[0], Signature | Canvas)
        and isinstance(items[0], Iterable)
    ):
        items = tuple(items[0])
    out: list[Signature | Canvas] = []
    for item in items:
        if not isinstance(item, Signature | Canvas):
            raise TypeError(f"{what} takes signatures (task.s(...)) or canvases, got {item!r}")
        out.append(item)
    return out


def _first_app(nodes: Iterable[Signature | Canvas]) -> App | None:
    for node in nodes:
        found = node.app if isinstance(node, Signature) else node._app()
        if found is not None:
            return found
    return None


class group(Canvas):
    """Run signatures in parallel: ``group(add.s(i, i) for i in range(10))``."""

    def __init__(self, *tasks: Any) -> None:
        self.tasks = _members(tasks, "group")

    def _app(self) -> App | None:
        return _first_app(self.tasks)

    def apply_async(self, *, app: App | None = None) -> GroupResult:
        """Send every member in one publish; returns a :class:`GroupResult`."""
        result: GroupResult = super().apply_async(app=app)
        return result

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"


class chain(Canvas):
    """Run steps one after another, each receiving the previous result first:
    ``chain(add.s(2, 2), mul.s(4))`` or ``add.s(2, 2) | mul.s(4)``."""

    steps: list[Signature | Canvas]

    def __init__(self, *steps: Any) -> None:
        flat: list[Signature | Canvas] = []
        for step in _members(steps, "chain"):
            flat.extend(step.steps if type(step) is chain else [step])
        if not flat:
            raise ValueError("a chain needs at least one step")
        self.steps = flat

    def _app(self) -> App | None:
        return _first_app(self.steps)

    def apply_async(self, *, app: App | None = None) -> ChainResult:
        """Send the first step; returns a :class:`ChainResult`."""
        result: ChainResult = super().apply_async(app=app)
        return result

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps))


class chord(chain):
    """Run ``header`` in parallel, then ``body`` once with the list of their results."""

    def __init__(self, header: Iterable[Any] | group, body: Signature | Canvas) -> None:
        head = header if isinstance(header, group) else group(header)
        if not isinstance(body, Signature | Canvas):
            raise TypeError(f"a chord body must be a signature or a canvas, got {body!r}")
        super().__init__(head, body)
        self.header = head
        self.body = body

    def apply_async(self, *, app: App | None = None) -> ChordResult:
        """Send the header; returns a :class:`ChordResult`."""
        result: ChordResult = super().apply_async(app=app)  # type: ignore[assignment]
        return result

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


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


class _Compiler:
    """Turns a canvas tree into specs with fresh ids, plus the canvas records to write."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.now = app.clock.time()
        self.records: list[tuple[str, dict[str, Any]]] = []

    def node(
        self, node: Signature | Canvas, root: bool = False
    ) -> tuple[dict[str, Any], ResultHandle]:
        if isinstance(node, Signature):
            return self.task(node)
        if isinstance(node, group):
            return self.group(node, root)
        if isinstance(node, chain):
            return self.chain(node, root)
        raise TypeError(f"not a canvas node: {node!r}")

    def task(self, sig: Signature) -> tuple[dict[str, Any], ResultHandle]:
        from ..app import _check_call_options

        _check_call_options(sig.name, sig.options)
        opts = dict(sig.options)
        task_id = str(opts.pop("task_id", None) or uuid.uuid4())
        task = self.app.registry.get(sig.name)
        if task is not None and sig.immutable:
            task.schema.bind_check(sig.args, sig.kwargs)
        spec = {
            "k": "t",
            "id": task_id,
            "name": sig.name,
            "args": [_untyped(sig.name, f"argument {i}", a) for i, a in enumerate(sig.args)],
            "kwargs": {k: _untyped(sig.name, f"argument {k!r}", v) for k, v in sig.kwargs.items()},
            "opts": _untyped(sig.name, "options", opts),
            "im": sig.immutable,
        }
        return spec, AsyncResult(self.app, task_id, sig.name)

    def group(self, node: group, root: bool) -> tuple[dict[str, Any], ResultHandle]:
        gid = str(uuid.uuid4())
        built = [self.node(m) for m in node.tasks]
        specs = [s for s, _ in built]
        self.records.append((gid, group_record(gid, specs, self.now, root)))
        return {"k": "g", "id": gid, "members": specs}, GroupResult(
            self.app, gid, [h for _, h in built]
        )

    def chain(self, node: chain, root: bool) -> tuple[dict[str, Any], ResultHandle]:
        cid = str(uuid.uuid4())
        built = [self.node(s) for s in node.steps]
        specs = [s for s, _ in built]
        is_chord = isinstance(node, chord)
        self.records.append((cid, chain_record(cid, specs, self.now, root, chord=is_chord)))
        cls = ChordResult if is_chord else ChainResult
        return {"k": "c", "id": cid, "steps": specs}, cls(self.app, cid, [h for _, h in built])
