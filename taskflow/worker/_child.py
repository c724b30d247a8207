"""The child side of the process pool (:mod:`.procpool`): ``python -m taskflow.worker._child
REQUEST_FD REPLY_FD``.

The worker sends, as length-prefixed pickles over two private pipes, first the app's
``module:attr`` and its ``sys.path``, then one ``(message body, context fields)`` per task.
The child imports the app, answers ``("ready", pid)``, and runs each task: it decodes the
message with the codec and the arguments with the task's payload schema, calls the
function with the task context set, and answers with the encoded result, the exception,
or a payload error; each answer ends with the child's resident memory in bytes (0 when
the worker sets no memory limit: it is not read then). It exits
when the worker closes the request pipe, and also when the worker process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
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
from ..context import TaskContext, reset_current, set_current
from ..errors import PayloadError, Reject, Retry
from ..message import format_traceback

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
    view = memoryview(_HEADER.pack(len(data)) + data)
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


def _run(registry: Any, body: bytes, fields: dict[str, Any]) -> tuple[Any, ...]:
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
    except BaseException as exc:  # every outcome goes back to the worker
        return _raised(exc)
    finally:
        reset_current(token)
    try:
        encoded = codec.dumps(task.schema.encode_result(value))
    except Exception as exc:
        return ("payload", _payload_text(env.task, exc, "result could not be encoded"))
    return ("ok", encoded)


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
    if isinstance(exc, Exception | Retry | Reject):
        try:
            data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # our own bytes: checked that the worker can load them
        except Exception:
            data = None
    return ("raised", data, name, str(exc), text)


def main(argv: list[str]) -> int:
    """Serve the worker on the two pipes named in ``argv``."""
    requests, replies = int(argv[1]), int(argv[2])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker decides when a child ends
    _die_with_parent()
    setup = _recv(requests)
    if setup is None:
        return 0
    sys.path[:] = setup["path"]
    try:
        registry = _load_registry(setup["app"])
    except BaseException as exc:  # reported to the worker, which says it
        _send(replies, ("error", f"{type(exc).__name__}: {exc}"))
        return 1
    _send(replies, ("ready", os.getpid()))
    # Reading the resident memory costs a third of a no-op body: only for a memory limit.
    measure = setup.get("rss", True)
    while True:
        request = _recv(requests)
        if request is None:
            return 0
        _send(replies, (*_run(registry, *request), _rss() if measure else 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
