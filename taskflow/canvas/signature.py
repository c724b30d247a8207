"""Signatures and canvases as data: ``Signature``, ``group``, ``chain`` and ``chord``.

A :class:`Signature` is a task name with arguments and call options, safe to pass around;
``a | b`` chains them. ``group(...)`` runs signatures in parallel, ``chain(...)`` one after
another with each step receiving the previous result, ``chord(header, body)`` runs ``body``
once with the header's results. Sending a canvas compiles it (:mod:`.compile`) and starts it.

Callbacks (``link``/``link_error`` options, ``Signature.on_error``) are compiled into the
envelope's ``canvas`` when their task is sent (:func:`attach_callbacks`); the canvas
continuation sends them once the task's outcome is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..kernel import (
    CALL_OPTIONS,
    SEND_OPTIONS,
    Kernel,
    Prepared,
    check_call_options,
    check_call_values,
    prepare,
)
from ..options import call_arguments
from ..results.handle import AsyncResult
from .compile import Compiler, Spec, apply
from .results import ChainResult, ChordResult, GroupResult, ResultHandle

__all__ = [
    "Canvas",
    "HasKernel",
    "Signature",
    "attach_callbacks",
    "chain",
    "chord",
    "group",
    "prepare_signatures",
    "send_signatures",
]


class HasKernel(Protocol):
    """What a canvas can be sent through: an ``App`` (anything with a ``kernel``)."""

    @property
    def kernel(self) -> Kernel: ...


def _kernel_of(owner: HasKernel | Kernel) -> Kernel:
    return owner if isinstance(owner, Kernel) else owner.kernel


CALLBACK_OPTIONS = ("link", "link_error")


def _callback_nodes(name: str, option: str, value: Any) -> list[Signature | Canvas]:
    """The signatures (or canvases) of a ``link``/``link_error`` option."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, Signature | Canvas):
            raise TypeError(
                f"{name}: {option} takes a signature (task.s(...)), a canvas or a list of "
                f"them, got {type(item).__name__}"
            )
    return items


def split_callbacks(
    name: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``options`` without ``link``/``link_error``, and those as lists of nodes."""
    rest = {k: v for k, v in options.items() if k not in CALLBACK_OPTIONS}
    nodes = {k: _callback_nodes(name, k, options[k]) for k in CALLBACK_OPTIONS if k in options}
    return rest, {k: v for k, v in nodes.items() if v}


def attach_callbacks(kernel: Kernel, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Send options with ``link``/``link_error`` compiled into the envelope's ``canvas``
    (what the canvas continuation sends once the task's outcome is known)."""
    rest, nodes = split_callbacks(name, options)
    if nodes:
        entries = Compiler(kernel).callbacks(nodes)
        rest["canvas"] = {"v": 1, **(rest.get("canvas") or {}), **entries}
    return rest


class Signature:
    """A task name with arguments and call options: data, safe to pass around."""

    __slots__ = ("args", "immutable", "kernel", "kwargs", "name", "options")

    def __init__(
        self,
        app: HasKernel | Kernel,
        name: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
    ) -> None:
        self.kernel = _kernel_of(app)
        self.name = name
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable

    def set(self, **options: Any) -> Signature:
        """A copy with call options (queue, priority, countdown, link, ...) added."""
        check_call_options(self.name, options, CALL_OPTIONS)
        check_call_values(self.name, options, self.kernel.clock.time())
        split_callbacks(self.name, options)  # a link that is not a signature fails here
        return Signature(
            self.kernel,
            self.name,
            self.args,
            self.kwargs,
            {**self.options, **options},
            immutable=self.immutable,
        )

    def on_error(self, other: Signature | Canvas) -> Signature:
        """A copy that also sends ``other`` with this task's id once it failed for good."""
        return self._add_callback("link_error", other)

    def link(self, other: Signature | Canvas) -> Signature:
        """A copy that also sends ``other`` with this task's result once it succeeded."""
        return self._add_callback("link", other)

    def _add_callback(self, option: str, other: Signature | Canvas) -> Signature:
        known = _callback_nodes(self.name, option, self.options.get(option))
        added = _callback_nodes(self.name, option, other)
        return self.set(**{option: [*known, *added]})

    def partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Signature:
        """A copy with ``args`` prepended and ``kwargs`` merged in (unless immutable)."""
        if self.immutable:
            return self
        return Signature(
            self.kernel,
            self.name,
            (*args, *self.args),
            {**self.kwargs, **kwargs},
            self.options,
            immutable=False,
        )

    def clone(self, args: tuple[Any, ...] = ()) -> Signature:
        """A copy with ``args`` prepended (unless immutable)."""
        new_args = self.args if self.immutable else (*args, *self.args)
        return Signature(
            self.kernel, self.name, new_args, self.kwargs, self.options, immutable=self.immutable
        )

    def apply_async(self, **options: Any) -> AsyncResult[Any]:
        """Send it."""
        sig = self.set(**options) if options else self
        return send_signatures(self.kernel, [sig])[0]

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send it with extra arguments."""
        sig = Signature(
            self.kernel,
            self.name,
            (*self.args, *args),
            {**self.kwargs, **kwargs},
            self.options,
            immutable=self.immutable,
        )
        return sig.apply_async()

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]:
        """This task as a canvas spec, with its handle (see :mod:`.compile`)."""
        options, callbacks = split_callbacks(self.name, self.options)
        return compiler.task(
            self.name, self.args, self.kwargs, options, self.immutable, callbacks=callbacks
        )

    def __or__(self, other: Any) -> Any:
        """``a.s() | b.s()``: a chain."""
        if not isinstance(other, Signature | Canvas):
            return NotImplemented
        return chain(self, other)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}.{'si' if self.immutable else 's'}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (self.name, self.args, self.kwargs, self.options, self.immutable) == (
            other.name,
            other.args,
            other.kwargs,
            other.options,
            other.immutable,
        )

    __hash__ = None  # type: ignore[assignment]


def send_signatures(kernel: Kernel, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
    """Send ``signatures`` in as few broker round trips as the broker allows
    (``App.enqueue_many``)."""
    prepared = prepare_signatures(kernel, signatures)
    ids = kernel.enqueuer.enqueue_blocking(prepared) if prepared else []
    return [AsyncResult(kernel, tid, p.envelope.task) for tid, p in zip(ids, prepared, strict=True)]


def prepare_signatures(kernel: Kernel, signatures: Iterable[Signature]) -> list[Prepared]:
    """Check and encode each signature of an ``enqueue_many`` call (nothing is sent)."""
    settings, registry = kernel.settings, kernel.registry
    out = []
    for sig in signatures:
        if not isinstance(sig, Signature):
            raise TypeError(f"enqueue_many takes signatures (task.s(...)), got {sig!r}")
        name, opts = sig.name, sig.options
        if opts:  # most signatures of a batch carry no options: nothing to check
            check_call_options(name, opts, SEND_OPTIONS)
            opts = attach_callbacks(kernel, name, opts)
        out.append(prepare(settings, name, registry.get(name), sig.args, sig.kwargs, opts=opts))
    return out


class Canvas:
    """Base of ``group``, ``chain`` and ``chord``: compose with ``|``, send with
    ``apply_async()``."""

    def kernel_of(self) -> Kernel | None:
        """The kernel of the first task in the canvas (None for an empty one)."""
        raise NotImplementedError

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]:
        """This canvas as a spec, with its handle (see :mod:`.compile`)."""
        raise NotImplementedError

    def __or__(self, other: Signature | Canvas) -> chain:
        return chain(self, other)

    def __ror__(self, other: Signature) -> chain:
        return chain(other, self)

    def partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Canvas:
        """A copy whose first tasks get ``args`` prepended and ``kwargs`` merged in."""
        raise NotImplementedError

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: HasKernel | None = None,
    ) -> Any:
        """Send the canvas; returns its result handle.

        ``args``/``kwargs`` are partial arguments for the tasks that start the canvas: a
        chain's first step, each member of a group, each header member of a chord
        (prepended to their own arguments; immutable signatures ignore them).
        """
        kernel = _kernel_of(app) if app is not None else self.kernel_of()
        if kernel is None:
            raise ValueError(f"{self!r} has no task to take an App from; pass app=")
        args, kwargs = call_arguments(args, kwargs, f"{type(self).__name__}.apply_async")
        node = self.partial(args, kwargs) if args or kwargs else self
        return apply(kernel, node)


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


def _first_kernel(nodes: Iterable[Signature | Canvas]) -> Kernel | None:
    for node in nodes:
        found = node.kernel if isinstance(node, Signature) else node.kernel_of()
        if found is not None:
            return found
    return None


class group(Canvas):
    """Run signatures in parallel: ``group(add.s(i, i) for i in range(10))``."""

    def __init__(self, *tasks: Any) -> None:
        self.tasks = _members(tasks, "group")

    def kernel_of(self) -> Kernel | None:
        """The kernel of the first member."""
        return _first_kernel(self.tasks)

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]:
        """The group as a spec, with its :class:`GroupResult`."""
        return compiler.group(self.tasks, root)

    def partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> group:
        """A copy in which every member gets the partial arguments."""
        return group([m.partial(args, kwargs) for m in self.tasks])

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: HasKernel | None = None,
    ) -> GroupResult:
        """Send every member in one publish; returns a :class:`GroupResult`."""
        result: GroupResult = super().apply_async(args, kwargs, app=app)
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

    def kernel_of(self) -> Kernel | None:
        """The kernel of the first step."""
        return _first_kernel(self.steps)

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]:
        """The chain as a spec, with its :class:`ChainResult`."""
        return compiler.chain(self.steps, root, chord=False)

    def partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> chain:
        """A copy whose first step gets the partial arguments."""
        first, *rest = self.steps
        return chain(first.partial(args, kwargs), *rest)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: HasKernel | None = None,
    ) -> ChainResult:
        """Send the first step; returns a :class:`ChainResult`."""
        result: ChainResult = super().apply_async(args, kwargs, app=app)
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

    def build_spec(self, compiler: Compiler, root: bool) -> tuple[Spec, ResultHandle]:
        """The chord (a chain of its header group and body) as a spec."""
        return compiler.chain(self.steps, root, chord=True)

    def partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> chord:
        """A copy whose header members get the partial arguments."""
        return chord(self.header.partial(args, kwargs), self.body)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: HasKernel | None = None,
    ) -> ChordResult:
        """Send the header; returns a :class:`ChordResult`."""
        result: ChordResult = super().apply_async(args, kwargs, app=app)  # type: ignore[assignment]
        return result

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"
