"""The registry of an app's periodic tasks (``app.schedules``): declared in code, or stored
in the backend.

Two kinds of schedules, merged by name:

* **declared** with ``@app.periodic`` or ``app.add_periodic`` while the app has not talked
  to its backend yet (module level): kept in this process, like tasks. Every process that
  imports the app declares them again; no network at import time.
* **stored**: ``app.add_periodic`` once the app is running (it has connected), with
  ``persist=True``, or from ``taskflow schedules add``. One JSON document per app in the
  result store; it survives restarts and every beat process reads it on each tick.

Pausing is always stored (so that a pause from the command line reaches the running beat);
resuming records "now" as the schedule's last run, so runs that fell into the pause never
fire.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from .. import codec
from ..errors import ConfigError, NotFound
from ..kernel import Kernel
from ..task import Task, register
from .schedule import Schedule, ScheduleSpec, check_schedule_options, next_fire
from .store import BeatStore, ScheduleDoc

__all__ = ["PeriodicDecorator", "PeriodicRegistry", "ScheduleInfo"]

log = logging.getLogger("taskflow.beat")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """One schedule as listed: where it comes from, whether it is paused, its next run."""

    schedule: Schedule
    source: str  # "code" or "stored"
    paused: bool
    next_fire: float


class PeriodicRegistry:
    """Schedules of one app; the methods behind ``App.add_periodic`` and friends."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.declared: dict[str, Schedule] = {}
        self.store = BeatStore(kernel.results, kernel.settings.name)

    # -- building ----------------------------------------------------------------------
    def build(self, task: Task[Any, Any] | str, spec: ScheduleSpec) -> Schedule:
        """A validated schedule; its arguments are checked against the task's annotations."""
        check_schedule_options("add_periodic", spec)
        schedule = Schedule.build(self._task_name(task, spec.get("name")), spec)
        known = self.kernel.registry.get(schedule.task)
        if known is not None:  # PayloadError names the task, the parameter and the type
            known.schema.encode_args(tuple(schedule.args), dict(schedule.kwargs))
        return schedule

    def _task_name(self, task: Task[Any, Any] | str, name: str | None) -> str:
        if isinstance(task, Task):
            if task.kernel is not self.kernel:
                raise ConfigError(
                    f"schedule {name or task.name!r}: task {task.name!r} belongs to another app"
                )
            return task.name
        if isinstance(task, str):
            if self.kernel.registry.get(task) is None:
                raise ConfigError(
                    f"schedule {name or task!r}: no task named {task!r} is registered"
                )
            return task
        raise ConfigError(f"schedule {name!r}: expected a task or a task name, got {task!r}")

    # -- changing ----------------------------------------------------------------------
    def declare(self, schedule: Schedule) -> Schedule:
        """Keep ``schedule`` in this process (code-declared)."""
        if schedule.name in self.declared:
            raise ConfigError(f"schedule {schedule.name!r} is already declared")
        self.declared[schedule.name] = schedule
        return schedule

    def add(self, schedule: Schedule, persist: bool | None = None) -> Schedule:
        """Declare ``schedule``, or store it when ``persist`` (default: the app is running)."""
        if persist is None:
            persist = self.kernel.connected
        if not persist:
            return self.declare(schedule)
        if schedule.name in self.declared:
            raise ConfigError(
                f"schedule {schedule.name!r} is declared in code; give the stored one another name"
            )
        spec = schedule.to_dict()
        if not _json_safe(spec):
            raise ConfigError(
                f"schedule {schedule.name!r}: a stored schedule needs JSON-safe args and kwargs"
            )

        def put(doc: ScheduleDoc) -> None:
            doc.schedules[schedule.name] = spec

        self._io(self.store.modify(put))
        # Its runs count from now, not from whenever a beat first reads it.
        self._io(self.store.start_from(schedule.name, self.kernel.clock.time()))
        return schedule

    def remove(self, name: str) -> bool:
        """Remove a schedule (declared here or stored); True if there was one."""
        declared = self.declared.pop(name, None) is not None
        if declared and not self.kernel.connected:
            return True  # module level: no backend round trip

        def drop(doc: ScheduleDoc) -> bool:
            doc.paused.discard(name)
            return doc.schedules.pop(name, None) is not None

        stored = bool(self._io(self.store.modify(drop)))
        self._io(self.store.forget_last(name))
        return declared or stored

    def pause(self, name: str) -> None:
        """Stop firing ``name`` until resumed (every beat process sees it)."""
        self._set_paused(name, True)

    def resume(self, name: str) -> None:
        """Fire ``name`` again from its next run; runs during the pause never fire."""
        self._set_paused(name, False)
        self._io(self.store.set_last(name, self.kernel.clock.time()))

    def _set_paused(self, name: str, paused: bool) -> None:
        def change(doc: ScheduleDoc) -> None:
            if name not in doc.schedules and name not in self.declared:
                raise NotFound(f"no schedule named {name!r}")
            if paused:
                doc.paused.add(name)
            else:
                doc.paused.discard(name)

        self._io(self.store.modify(change))

    # -- reading -----------------------------------------------------------------------
    async def load(self) -> tuple[dict[str, Schedule], set[str]]:
        """Every schedule (declared, then stored ones that parse) and the paused names."""
        doc = await self.store.read()
        merged = dict(self.declared)
        for name, spec in doc.schedules.items():
            if name in merged:
                continue
            try:
                merged[name] = Schedule.from_dict(spec)
            except (ConfigError, KeyError, TypeError) as exc:
                log.warning("stored schedule %r is invalid and ignored: %s", name, exc)
        return merged, doc.paused & set(merged)

    def list(self) -> list[ScheduleInfo]:
        """Every schedule with its source, paused flag and next fire time, by name."""
        schedules, paused = self._io(self.load())
        now = self.kernel.clock.time()
        return [
            ScheduleInfo(
                s, "code" if n in self.declared else "stored", n in paused, next_fire(s, now)
            )
            for n, s in sorted(schedules.items())
        ]

    def _io(self, coro: Any) -> Any:
        async def run() -> Any:
            await self.kernel.connect()
            return await coro

        return self.kernel.call(run())


class PeriodicDecorator:
    """What ``@app.periodic(...)`` returns: registers the function as a task (unless it is
    one already) and declares its schedule."""

    def __init__(self, registry: PeriodicRegistry, spec: ScheduleSpec) -> None:
        check_schedule_options("periodic", spec)
        self._registry = registry
        self._spec = spec

    @overload
    def __call__(self, fn: Task[P, R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, fn: Any, /) -> Any:
        registry = self._registry
        if isinstance(fn, Task):
            task: Task[Any, Any] = fn
        else:
            if not callable(fn):
                raise TypeError(f"@app.periodic needs a function or a task, got {fn!r}")
            # Check the schedule before the task is registered: a typo in the cron
            # expression must not leave a half-declared task behind.
            Schedule.build(f"{fn.__module__}.{fn.__qualname__}", self._spec)
            task = register(registry.kernel, fn, None, {})
        registry.declare(registry.build(task, self._spec))
        return task


def _json_safe(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (a stored spec must)."""
    try:
        return bool(codec.loads(codec.dumps(value)) == value)
    except (TypeError, ValueError):
        return False
