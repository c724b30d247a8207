"""What ``@app.task(...)`` with options returns: a decorator that registers on the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from .kernel import Kernel
from .options import TaskOptions
from .task import Task, register

__all__ = ["BoundTaskDecorator", "TaskDecorator"]

P = ParamSpec("P")
R = TypeVar("R")


class BoundTaskDecorator(Protocol):
    """``@app.task(bind=True)``: the context parameter is not part of ``delay``'s signature."""

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class TaskDecorator:
    """``@app.task(name=..., **options)``: registers the function it is applied to."""

    def __init__(self, kernel: Kernel, name: str | None, options: dict[str, Any]) -> None:
        self._kernel = kernel
        self._name = name
        # A named task validates at once; an unnamed one when it is applied (still the
        # decorator line), so that the error can name the task.
        if name is not None:
            TaskOptions.build(name, options)
        self._options = options

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Any:
        return register(self._kernel, fn, self._name, self._options)
