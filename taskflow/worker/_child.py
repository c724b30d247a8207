"""The child side of the process pool (:mod:`.procpool`): ``python -m taskflow.worker._child
REQUEST_FD REPLY_FD LOG_FD``.

The worker sends, as length-prefixed pickles over private pipes, first the app's
``module:attr``, its ``sys.path`` and its logging levels, then one ``(message body, context
fields)`` per task. The child imports the app, answers ``("ready", pid, task names)``, and runs each
task: it decodes the message with the codec and the arguments with the task's payload
schema, calls the function with the task context set, and answers ``(outcome, rss, logged)``:
the encoded result, the exception or a payload error; its resident memory in bytes (0
when the worker sets no memory limit: it is not read then); and how many log records it
has sent so far. It exits when the worker closes the request pipe, and also when the
worker process is gone.

Log records go to the worker on the third pipe (:class:`_Forward`, the only handler in the
child): the worker's own logging configuration formats and writes them, as it does for a
body on a thread, and the worker handles a body's records before its outcome.

A process a body forks gets none of this (:func:`_forked`): not the pipes, not the log
handler, and SIGTERM as Python's default, which the child itself does not take.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import io
import logging
import os
import pickle
import resource
import signal
import struct
import sys
import threading
import time
from typing import Any

from .. import codec
from ..context import TaskContext, current_task, reset_current, set_current
from ..errors import USER_CODE_ERRORS, PayloadError, stop_iteration_error
from ..message import error_message, format_traceback

_HEADER = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1


def _read(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int) -> Any:
    header = _read(fd, _HEADER.size)
    if header is None:
        return None
    data = _read(fd, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)  # from our worker


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write(fd, _HEADER.pack(len(data)) + data)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rss() -> int:
    """Resident memory in bytes (/proc; else the peak, which getrusage reports)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _die_with_parent() -> None:
    """End this process when the worker's goes away, even while a body runs."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="taskflow-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


class _Forward(logging.Handler):
    """Sends each record, as a pickled dict, to the worker on ``fd``.

    The message is formatted here (its arguments may not pickle, and may be gone later),
    the traceback too; the record keeps the task id and name of the body that logged it.
    ``sent`` counts the records sent (the worker waits for a body's before its outcome).
    """

    def __init__(self, fd: int) -> None:
        super().__init__(logging.NOTSET)
        self.fd = fd
        self.sent = 0
        self._traceback = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        fields = dict(record.__dict__)
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info:
            fields["exc_text"] = record.exc_text or self._traceback.formatException(record.exc_info)
        fields["exc_info"] = None
        if "task_id" not in fields:
            ctx = current_task()
            fields["task_id"] = ctx.id if ctx is not None else None
            fields["task_name"] = ctx.name if ctx is not None else None
        try:
            data = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an extra= value that does not pickle: sent as its repr
            plain = (str, int, float, bool, type(None))
            data = pickle.dumps(
                {k: v if isinstance(v, plain) else repr(v) for k, v in fields.items()},
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        with contextlib.suppress(OSError):  # the worker is gone: this process ends soon
            _write(self.fd, _HEADER.pack(len(data)) + data)
            self.sent += 1


def _route_logs(forward: _Forward, levels: dict[str, Any]) -> None:
    """Make ``forward`` the only handler, with the worker's levels: every record a logger
    here lets through goes to the worker, whose own configuration writes it once."""
    root = logging.getLogger()
    loggers = [lg for lg in root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in [root, *loggers]:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    root.addHandler(forward)
    root.setLevel(levels.get("root", logging.WARNING))
    for name, level in levels.get("levels", {}).items():
        logging.getLogger(name).setLevel(level)
    for name in levels.get("disabled", ()):
        logging.getLogger(name).disabled = True


def _ignore(signum: int, frame: Any) -> None:
    """The child's SIGTERM handler: nothing (see :func:`main`)."""


def _hold_sigterm() -> None:
    """Before a fork: a SIGTERM that reaches the new process before :func:`_forked` ran
    waits (blocked) instead of meeting the handler it inherits, which ignores it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _release_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _forked(forward: _Forward, pipes: tuple[int, ...]) -> None:
    """In a process a body forks (``os.fork``, multiprocessing's ``fork``): leave the
    worker's pipes to this child (a copy held open would keep the worker from seeing this
    child end), log as a plain Python process does (to stderr, WARNING and above), and take
    SIGTERM as a plain process does (``Process.terminate()`` ends it, also one sent while
    it was being forked)."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forking thread is main here
    finally:
        _release_sigterm()
    logging.getLogger().removeHandler(forward)
    for fd in pipes:
        with contextlib.suppress(OSError):
            os.close(fd)


def _flush_each_line() -> None:
    """Write what this process prints a line at a time, as to a terminal.

    Written to a pipe or a file, standard output is block-buffered: a child that a time
    limit, a cancel or ``stop_now()`` kills (``SIGKILL``, no chance to flush) would lose
    the lines its body printed, and the worker's log would show them late or never.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def _load_registry(spec: str) -> Any:
    """The task registry of the app at ``module[:attr]`` (attr default ``app``)."""
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    if not attr:
        # Like ``-A``: the attribute ``app``, else the module's only App.
        apps = [v for v in vars(obj).values() if _is_app(v)]
        obj = obj.app if hasattr(obj, "app") or len(apps) != 1 else apps[0]
    else:
        for part in attr.split("."):
            obj = getattr(obj, part)
    return obj.kernel.registry


def _is_app(value: Any) -> bool:
    try:
        return not isinstance(value, type) and "registry" in dir(vars(value)["kernel"])
    except Exception:
        return False


def _run(
    registry: Any, body: bytes, fields: dict[str, Any], trace: dict[str, str] | None = None
) -> tuple[Any, ...]:
    if not trace:
        return _run_body(registry, body, fields)
    try:
        from opentelemetry import context, propagate
    except ImportError:  # the worker's environment has it; this one need not
        return _run_body(registry, body, fields)
    token = context.attach(propagate.extract(trace))
    try:
        return _run_body(registry, body, fields)
    finally:
        context.detach(token)


def _run_body(registry: Any, body: bytes, fields: dict[str, Any]) -> tuple[Any, ...]:
    env = codec.decode_envelope(body)
    task = registry.get(env.task)
    if task is None:
        return _raised(LookupError(f"task {env.task!r} is not registered in the child's app"))
    try:
        args, kwargs = task.schema.decode_args(env.args, env.kwargs)
    except Exception as exc:
        return ("payload", _payload_text(env.task, exc, "arguments could not be decoded"))
    ctx = TaskContext(**fields)
    if task.options.bind:
        args = (ctx, *args)
    token = set_current(ctx)
    try:
        value = task.fn(*args, **kwargs)
    except StopIteration as exc:  # as on the thread pool (worker/bodies.py)
        return _raised(stop_iteration_error(exc))
    except BaseException as exc:  # every outcome goes back to the worker
        return _raised(exc)
    finally:
        reset_current(token)
    if inspect.isawaitable(value):  # a decorated async def: it runs here, to its end
        try:
            value = _run_awaitable(value, ctx)
        except BaseException as exc:
            return _raised(exc)
    try:
        encoded = codec.dumps(task.schema.encode_result(value))
    except Exception as exc:
        return ("payload", _payload_text(env.task, exc, "result could not be encoded"))
    return ("ok", encoded)


def _run_awaitable(awaitable: Any, ctx: TaskContext) -> Any:
    """Run what a ``def`` wrapper returned (the coroutine of an async def) in an event
    loop of this process, with the task context set."""
    import asyncio  # only for such bodies: a child starts without it

    async def run() -> Any:
        token = set_current(ctx)
        try:
            return await awaitable
        finally:
            reset_current(token)

    return asyncio.run(run())


def _payload_text(task: str, exc: Exception, what: str) -> str:
    # Decoders of other libraries may quote the offending value: name only what failed.
    if isinstance(exc, PayloadError):
        return str(exc)
    return f"{task}: {what} ({type(exc).__name__})"


def _raised(exc: BaseException) -> tuple[Any, ...]:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    text = format_traceback(exc)
    data: bytes | None = None
    if isinstance(exc, USER_CODE_ERRORS):  # Retry and Reject among them
        try:
            data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # our own bytes: checked that the worker can load them
        except Exception:
            data = None
    return ("raised", data, name, error_message(exc), text)


def main(argv: list[str]) -> int:
    """Serve the worker on the two pipes named in ``argv``."""
    requests, replies, logs = int(argv[1]), int(argv[2]), int(argv[3])
    # The worker decides when a child ends: a SIGTERM to every process of the service
    # (systemd's stop) is left to the worker. A handler that does nothing, not SIG_IGN,
    # which the programs a body starts would inherit: their terminate() would do nothing.
    signal.signal(signal.SIGTERM, _ignore)
    _die_with_parent()
    _flush_each_line()
    forward = _Forward(logs)
    os.register_at_fork(
        before=_hold_sigterm,
        after_in_parent=_release_sigterm,
        after_in_child=lambda: _forked(forward, (requests, replies, logs)),
    )
    setup = _recv(requests)
    if setup is None:
        return 0
    sys.path[:] = setup["path"]
    levels = setup.get("logging", {})
    # Before the import too: what the app logs then goes to the worker, and a
    # ``logging.basicConfig()`` in its module finds a handler and adds none.
    _route_logs(forward, levels)
    try:
        registry = _load_registry(setup["app"])
    except BaseException as exc:  # reported to the worker, which says it
        _send(replies, ("error", f"{type(exc).__name__}: {exc}"))
        return 1
    _route_logs(forward, levels)  # the app's module may have configured logging
    _send(replies, ("ready", os.getpid(), list(registry)))
    # Reading the resident memory costs a third of a no-op body: only for a memory limit.
    measure = setup.get("rss", True)
    while True:
        request = _recv(requests)
        if request is None:
            return 0
        outcome = _run(registry, *request)
        _send(replies, (outcome, _rss() if measure else 0, forward.sent))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
