"""The process pool: sync task bodies in child processes, with hard limits.

``Worker(pool="processes")`` keeps ``concurrency`` child processes (:mod:`._child`); the
message crosses to a child as the bytes the broker delivered, the result comes back
encoded. Here, in the worker: ``time_limit`` (SIGKILL at the limit, no SIGTERM first: a
body that could be stopped politely would not need a hard limit; the attempt fails with
``TaskTimeout``); a cancelled or stopped job kills its child and returns only once the child
is gone, so the body can no longer run when its message is settled or handed back; a child
that dies on its own raises :class:`ChildLost` (the executor leaves the message to the
broker: a lost delivery); ``max_tasks_per_child`` / ``max_memory_per_child`` retire a child
between tasks. A child that ends is replaced, unless the worker stops. Children run in
their own process group and ignore SIGTERM (the worker decides when they end), and end
when the worker process is gone; a kill, and the end of a child, take its process group
with it (what its bodies started and left running). What a child logs comes back on a pipe
of its own and goes through the worker's logging configuration (:class:`_LogReader`), with
the levels the worker had when the child started. ``docs/guide.md`` (Pools) is the user's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from .. import codec
from ..context import TaskContext
from ..errors import ConfigError, PayloadError, TaskTimeout
from ..kernel import Kernel
from .scheduler import Job

__all__ = [
    "POOLS",
    "ChildLost",
    "ProcessPool",
    "RemoteError",
    "UndecodablePayload",
    "check_pool_options",
    "locate_app",
    "unenforced_time_limits",
]

log = logging.getLogger("taskflow.worker")

POOLS: Final = ("threads", "processes")
"""The ``pool=`` choices of a worker."""

_HEADER: Final = struct.Struct(">I")
# How long a new child may take to import the app before the worker gives up on it.
_START_TIMEOUT: Final = 60.0
# How long a retired child gets to exit after its pipe is closed, before SIGKILL.
_EXIT_WAIT: Final = 1.0
_REAP_WAIT: Final = 5.0
# os.waitid, to see that a child exited without reaping it (Python 3.13 has it on macOS).
_WAITID: Final = getattr(os, "waitid", None)
# How long a body's outcome may wait for the log records it sent before it (they are in
# the pipe already: this bounds only a worker whose loop is held up).
_LOG_WAIT: Final = 1.0
_STARTING: Final = "taskflow-child-start"
_CONTEXT_FIELDS: Final = (
    "id",
    "name",
    "attempt",
    "retries",
    "queue",
    "priority",
    "headers",
    "deadline",
    "delivery",
    "enqueued_at",
    "root_id",
    "parent_id",
)


class ChildLost(BaseException):  # a signal to the executor, not an error of the task
    """The child running a body died without answering (crash, ``os._exit``, SIGKILL).

    A ``BaseException``, so that middleware catching ``Exception`` does not turn it into a
    failure of the task: the delivery is lost, not the attempt.
    """


class UndecodablePayload(PayloadError):
    """The child could not decode the arguments or encode the result: the executor records
    it as the :class:`~taskflow.errors.PayloadError` the thread pool records, and
    dead-letters the message with reason ``payload``."""


class RemoteError(Exception):
    """An exception raised by a body in a child that could not be sent back as itself (it
    does not pickle); its message is ``"<type>: <message>"``."""


class _RemoteTraceback(Exception):  # shown as the cause, with the child's traceback
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nin the child process:\n{self.text}"


def check_pool_options(
    pool: str, max_tasks_per_child: int | None, max_memory_per_child: float | None
) -> None:
    """ValueError for a pool option out of range or given to the thread pool."""
    if pool not in POOLS:
        raise ValueError(f"worker pool must be 'threads' or 'processes', got {pool!r}")
    mtpc = max_tasks_per_child
    if mtpc is not None and (isinstance(mtpc, bool) or not isinstance(mtpc, int) or mtpc < 1):
        raise ValueError(f"max_tasks_per_child must be a positive integer, got {mtpc!r}")
    mem = max_memory_per_child
    if mem is not None and (
        isinstance(mem, bool) or not isinstance(mem, int | float) or not 0 < mem < math.inf
    ):  # NaN compares false with every size: the limit would never recycle a child
        raise ValueError(f"max_memory_per_child must be a positive number of MB, got {mem!r}")
    if pool == "threads" and (mtpc is not None or mem is not None):
        raise ValueError("max_tasks_per_child and max_memory_per_child need pool='processes'")


def unenforced_time_limits(kernel: Kernel, queues: Sequence[str], processes: bool) -> list[str]:
    """``name (kind)`` of each task declared for one of ``queues`` with a ``time_limit``
    that a worker on this pool cannot enforce: an ``async def`` body (on any pool: only
    its ``timeout`` ends it, by cancelling it), or a sync body on the thread pool."""
    default = kernel.settings.default_queue
    found = []
    for name in kernel.registry:
        task = kernel.registry[name]
        if task.options.time_limit is None or (task.options.queue or default) not in queues:
            continue
        if task.is_async:
            found.append(f"{name} (async def)")
        elif not processes:
            found.append(f"{name} (def, on the thread pool)")
    return found


def locate_app(kernel: Kernel, app_path: str | None) -> str:
    """The ``module:attr`` a child imports to find the app of ``kernel``.

    ``app_path`` when given (the CLI passes ``-A``); else the first imported module (other
    than ``__main__``, which a child cannot import under the same name) with a global whose
    ``kernel`` is this one. ConfigError when there is none.
    """
    if app_path:
        return app_path
    for name, module in list(sys.modules.items()):
        if name in {"__main__", "__mp_main__"} or module is None:
            continue
        with contextlib.suppress(Exception):
            for attr, value in list(vars(module).items()):
                with contextlib.suppress(Exception):
                    if not isinstance(value, type) and vars(value).get("kernel") is kernel:
                        return f"{name}:{attr}"
    raise ConfigError(
        f"pool='processes': the child processes cannot find app {kernel.settings.name!r}: "
        "define the App at module level of an importable module (not __main__), or pass "
        "app_path='module:attr' to the worker (taskflow worker passes -A)"
    )


class _Child:
    """One child process and the three pipes to it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        inp: Any,
        out: Any,
        *,
        logs: _LogReader,
        log_pipe: Any,
    ) -> None:
        self.proc = proc
        self.reader = reader
        # The transports of the child's replies and logs: closed by end(), not by the end
        # of their input (uvloop's pipe keeps itself open after that, asyncio's closes).
        self.inp: asyncio.ReadTransport = inp
        self.out: asyncio.WriteTransport = out
        self.logs = logs
        self.log_pipe: asyncio.ReadTransport = log_pipe
        self.tasks = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: Any) -> None:
        import pickle  # loaded with the first child, not by every worker (bench.startup)

        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.out.write(_HEADER.pack(len(data)) + data)

    async def recv(self) -> Any:
        """The next message; IncompleteReadError once the child is gone."""
        import pickle

        (size,) = _HEADER.unpack(await self.reader.readexactly(_HEADER.size))
        return pickle.loads(await self.reader.readexactly(size))  # our own child

    def kill(self) -> None:
        """SIGKILL the child and what its bodies started in its process group."""
        _end_group(self.proc)

    async def end(self, wait: float) -> None:
        """Close the child's input (it exits when idle), give it ``wait`` seconds, then
        kill it; returns once it is reaped."""
        self.out.close()
        try:
            await _reap(self.proc, wait)
            # What it logged last (before a SIGKILL at a time limit, say) is in the pipe.
            await self.logs.drained(_LOG_WAIT)
        finally:
            self.inp.close()
            self.log_pipe.close()

    def exit_text(self) -> str:
        return _exit_text(self.proc)


class _LogReader(asyncio.Protocol):
    """Reads the log records a child sends (``_child._Forward``) and hands each to the
    worker's logger of the same name, as if it had been logged here."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.seen = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        import pickle

        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            end = _HEADER.size + _HEADER.unpack_from(buffer)[0]
            if len(buffer) < end:
                break
            fields = pickle.loads(buffer[_HEADER.size : end])  # our own child
            del buffer[:end]
            self.seen += 1
            _log_record(fields)
        if self._waiter is not None and self.seen >= self._want:
            self._wake()

    def eof_received(self) -> None:
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def caught_up(self, count: int, wait: float) -> None:
        """Return once ``count`` records were handled (or the pipe ended, or ``wait``
        seconds passed)."""
        if self.seen >= count or self._done.done():
            return
        self._want = count
        self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), wait)

    async def drained(self, wait: float) -> None:
        """Return once the child's end of the pipe is closed and all read (or ``wait``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), wait)


def _log_record(fields: dict[str, Any]) -> None:
    record = logging.makeLogRecord(fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def _logging_levels() -> dict[str, Any]:
    """The levels a child's loggers get: the worker's, as they are now."""
    root = logging.getLogger()
    loggers = [
        (name, logger)
        for name, logger in list(root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    ]
    return {
        "root": root.level,
        "levels": {name: lg.level for name, lg in loggers if lg.level != logging.NOTSET},
        "disabled": [name for name, lg in loggers if lg.disabled],
    }


async def _reap(proc: subprocess.Popen[bytes], wait: float) -> None:
    """Wait ``wait`` seconds for ``proc`` to exit, then SIGKILL it; end what is left of its
    process group (processes its bodies started and left running); return once reaped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while _exit_status(proc) is None:
        if loop.time() >= deadline:
            _end_group(proc)
            deadline = loop.time() + _REAP_WAIT
        await asyncio.sleep(0.005)
    _end_group(proc)
    proc.wait()  # it has exited: returns at once


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group that child ``proc`` leads: the child (if it still runs)
    and every process its bodies started there, which would otherwise outlive the body.
    Only while the child is not reaped: its pid, the group's id, cannot be reused until
    then. A process started in a session of its own (``start_new_session=True``) is not in
    the group, and is left alone."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    """``proc``'s exit status as ``Popen.returncode`` gives it, or None while it runs;
    where the system can tell (``waitid`` with ``WNOWAIT``), without reaping it, so that
    its process group can still be ended (:func:`_end_group`)."""
    if proc.returncode is not None or _WAITID is None:
        return proc.poll()
    try:
        info = _WAITID(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else
        return proc.poll()
    if info is None:
        return None
    status = int(info.si_status)
    return status if info.si_code == os.CLD_EXITED else -status


async def _discard(proc: subprocess.Popen[bytes], pipes: Sequence[asyncio.BaseTransport]) -> None:
    """Kill a child that did not start, close the ``pipes`` connected to it, and reap it."""
    for pipe in pipes:
        pipe.close()
    _end_group(proc)
    await asyncio.shield(_reap(proc, _REAP_WAIT))


def _exit_text(proc: subprocess.Popen[bytes]) -> str:
    code = _exit_status(proc)
    if code is None:
        return "closed its pipe"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class ProcessPool:
    """``size`` child processes running sync bodies of the app at ``app_path``."""

    def __init__(
        self,
        kernel: Kernel,
        size: int,
        *,
        app_path: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
    ) -> None:
        self.kernel = kernel
        self.size = size
        self.app_path = app_path
        self.max_tasks = max_tasks_per_child
        self.max_rss = None if max_memory_per_child is None else max_memory_per_child * 2**20
        self._idle: list[_Child] = []
        self._live = 0  # children started or starting, not yet retired
        self._cond: asyncio.Condition | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._failure: ConfigError | None = None
        self._open = False
        self._replacing = False  # whether a child that ends is replaced at once
        self._compared = False  # the first child's tasks checked against the worker's

    async def open(self) -> None:
        """Start every child; ConfigError if the app cannot be located or imported."""
        self.app_path = locate_app(self.kernel, self.app_path)
        self._cond = asyncio.Condition()
        self._failure = None
        self._open = True
        self._replacing = True
        self._live = self.size
        started = await asyncio.gather(
            *(self._spawn() for _ in range(self.size)), return_exceptions=True
        )
        self._idle = [child for child in started if isinstance(child, _Child)]
        errors = [exc for exc in started if isinstance(exc, BaseException)]
        if errors:
            await self.close()
            raise errors[0]

    async def _spawn(self) -> _Child:
        loop = asyncio.get_running_loop()
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        log_r, log_w = os.pipe()
        theirs = (req_r, res_w, log_w)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskflow.worker._child", *map(str, theirs)],
                pass_fds=theirs,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        except BaseException:
            for fd in (req_w, res_r, log_r):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        child: _Child | None = None
        pipes: list[asyncio.BaseTransport] = []
        try:
            logs = _LogReader()
            log_pipe, _ = await loop.connect_read_pipe(lambda: logs, os.fdopen(log_r, "rb", 0))
            pipes.append(log_pipe)
            reader = asyncio.StreamReader(limit=2**20)
            inp, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(res_r, "rb", 0)
            )
            pipes.append(inp)
            out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(req_w, "wb", 0))
            pipes.append(out)
            child = _Child(proc, reader, inp, out, logs=logs, log_pipe=log_pipe)
            child.send(
                {
                    "app": self.app_path,
                    "path": list(sys.path),
                    "rss": self.max_rss is not None,
                    "logging": _logging_levels(),
                }
            )
            hello = await asyncio.wait_for(child.recv(), _START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError):
            hello = ("error", f"the child process {_exit_text(proc)} before it was ready")
        except BaseException:
            await _discard(proc, pipes)
            raise
        if child is None or hello[0] != "ready":
            await _discard(proc, pipes)
            raise ConfigError(f"pool='processes': cannot load app {self.app_path}: {hello[1]}")
        if not self._compared:
            self._compared = True
            self._compare_tasks(set(hello[2]))
        return child

    def _compare_tasks(self, known: set[str]) -> None:
        """Warn about the sync tasks of the worker's app that the children's import of the
        app does not declare: each attempt of theirs would fail (``LookupError``)."""
        registry = self.kernel.registry
        missing = [n for n in registry if not registry[n].is_async and n not in known]
        if missing:
            module = (self.app_path or "").partition(":")[0]
            log.warning(
                "pool='processes': the app the child processes import (%s) does not declare "
                "%s, which this worker's app does: their bodies cannot run in a child, and "
                "each attempt fails; declare them in %s or in a module it imports",
                self.app_path,
                ", ".join(missing),
                module,
            )

    # -- running a body ---------------------------------------------------------------
    async def run(self, job: Job, ctx: TaskContext) -> Any:
        """Run ``job``'s body in a child and return its value (decoded).

        Raises what the body raised, :class:`~taskflow.errors.TaskTimeout` at the task's
        ``time_limit``, :class:`UndecodablePayload`, or :class:`ChildLost`.
        """
        child = await self._acquire()
        limit = job.task.options.time_limit
        killed: list[bool] = []
        timer = None
        fields = {f: getattr(ctx, f) for f in _CONTEXT_FIELDS}
        trace = _trace_carrier()
        child.send((job.delivery.body, fields, trace) if trace else (job.delivery.body, fields))
        if limit is not None:
            timer = asyncio.get_running_loop().call_later(limit, _kill, child, killed)
        try:
            reply = await child.recv()
        except asyncio.CancelledError:
            child.kill()
            # The message is handed back or settled only once the body cannot run.
            await asyncio.shield(self._replace(child))
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            await asyncio.shield(self._replace(child))
            if killed:
                env = job.envelope
                raise TaskTimeout(
                    f"{env.task}[{env.id}] exceeded its {limit}s time limit "
                    f"(child process {child.pid} killed)"
                ) from None
            raise ChildLost(
                f"the child process {child.pid} running {job.envelope.task}"
                f"[{job.envelope.id}] {child.exit_text()}"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        outcome, rss, logged = reply
        await child.logs.caught_up(logged, _LOG_WAIT)  # the body's lines before its outcome
        await self._checkin(child, rss, dead=bool(killed))
        return _outcome(job, outcome)

    async def _acquire(self) -> _Child:
        assert self._cond is not None
        async with self._cond:
            while True:
                while self._idle:
                    child = self._idle.pop()
                    if _exit_status(child.proc) is None and not child.reader.at_eof():
                        return child
                    self._background_replace(child)  # died while idle: it ran nothing
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure  # this attempt fails; the next one tries to start a child
                if not self._open:
                    raise ConfigError("the process pool is closed")
                if self._live < self.size:
                    self._start_one()
                await self._cond.wait()

    async def _checkin(self, child: _Child, rss: int, dead: bool) -> None:
        child.tasks += 1
        worn = self.max_tasks is not None and child.tasks >= self.max_tasks
        heavy = self.max_rss is not None and rss > self.max_rss
        if dead or worn or heavy or not self._open:
            if heavy:
                log.info(
                    "child process %d uses %d MB after a task; replacing it",
                    child.pid,
                    rss // 2**20,
                )
            await self._replace(child)
            return
        assert self._cond is not None
        async with self._cond:
            self._idle.append(child)
            self._cond.notify()

    async def _replace(self, child: _Child) -> None:
        """End ``child`` (killed already, or idle) and start another in its place."""
        self._live -= 1
        if self._open and self._replacing:
            self._start_one()
        await child.end(_EXIT_WAIT)

    def _start_one(self) -> None:
        self._live += 1
        self._in_background(self._start_in_background(), _STARTING)

    def _background_replace(self, child: _Child) -> None:
        log.warning("child process %d %s while idle; replacing it", child.pid, child.exit_text())
        self._in_background(self._replace(child), "taskflow-child-end")

    def _in_background(self, step: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(step, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start_in_background(self) -> None:
        assert self._cond is not None
        try:
            child = await self._spawn()
        except BaseException as exc:
            self._live -= 1
            if not isinstance(exc, Exception):
                raise
            if not isinstance(exc, ConfigError):
                exc = ConfigError(f"pool='processes': cannot start a child process: {exc}")
            log.error("%s", exc)
            async with self._cond:
                self._failure = exc
                self._cond.notify_all()
            return
        async with self._cond:
            if not self._open:
                await child.end(0.0)
                return
            self._idle.append(child)
            self._cond.notify()

    # -- stopping -----------------------------------------------------------------------
    def stop_replacing(self) -> None:
        """The worker stops: a child that ends now is not replaced (no new body starts)."""
        self._replacing = False

    async def close(self) -> None:
        """End every child: idle ones get their pipe closed (then SIGKILL after a second),
        children still starting are killed. Returns once all are reaped."""
        self._open = False
        for task in self._background:
            if task.get_name() == _STARTING:  # a child that ends is reaped, not abandoned
                task.cancel()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(child.end(_EXIT_WAIT) for child in idle))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()


def _trace_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``...), for the child to
    run the body in: the attempt's span is the parent of what the body traces and sends.
    Empty unless OpenTelemetry is in use in this process (its API imported)."""
    propagate = sys.modules.get("opentelemetry.propagate")
    if propagate is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _kill(child: _Child, killed: list[bool]) -> None:
    killed.append(True)
    child.kill()


def _outcome(job: Job, reply: tuple[Any, ...]) -> Any:
    """The body's value from the child's outcome, or its exception raised here."""
    kind = reply[0]
    if kind == "ok":
        return job.task.schema.decode_result(codec.loads(reply[1]))
    if kind == "payload":
        raise UndecodablePayload(reply[1])
    _, data, type_name, message, text = reply
    exc: BaseException = RemoteError(f"{type_name}: {message}")
    if data is not None:
        import pickle

        with contextlib.suppress(Exception):
            exc = pickle.loads(data)  # our own child, checked it loads
    exc.__cause__ = _RemoteTraceback(text)
    raise exc
