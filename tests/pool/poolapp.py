"""Tasks for the process-pool tests; the pool's child processes import this module.

``app`` is a module-level memory app (its workers find it without ``app_path``);
:func:`declare` registers the same tasks on another app, so a Redis-backed app in a test
can use ``app_path="tests.pool.poolapp:app"``: a child only needs the task registry.
Tasks that leave marks write ``<mark>-<pid>`` files in the directory they are given.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from taskflow import App, TaskContext

app = App("pool-tests")
log = logging.getLogger("pool.body")


def mark(directory: str, name: str) -> None:
    """Leave ``<name>-<pid>`` in ``directory`` (the test reads who ran what)."""
    (Path(directory) / f"{name}-{os.getpid()}").write_text("")


def whoami(n: int) -> int:
    """The pid of the process that ran the body."""
    return os.getpid() + 0 * n


def sleep_in_c(directory: str, seconds: float) -> int:
    """Mark ``started``, then block in C (``time.sleep``) for ``seconds``."""
    mark(directory, "started")
    time.sleep(seconds)
    mark(directory, "finished")
    return os.getpid()


def block_once(ctx: TaskContext, directory: str) -> list[int]:
    """The first run marks ``started`` and blocks; a later run returns ``[pid, attempt,
    delivery]``."""
    first = not any(Path(directory).glob("started-*"))
    mark(directory, "started")
    if first:
        time.sleep(60)
    mark(directory, "finished")
    return [os.getpid(), ctx.attempt, ctx.delivery]


def retry_once(ctx: TaskContext) -> int:
    """Ask for a retry on the first attempt; return the attempt that succeeded."""
    if ctx.attempt == 1:
        raise ctx.retry(countdown=0)
    return ctx.attempt


def crash(directory: str) -> None:
    """Mark ``started``, then end the child process at once (no answer, no cleanup)."""
    mark(directory, "started")
    os._exit(3)


def fail(message: str) -> None:
    """Raise ``LookupError(message)`` in the body."""
    raise LookupError(message)


def chatty(order: str) -> int:
    """Log at three levels, once with a traceback, naming ``order``; return the pid."""
    log.debug("checking %s", order)
    log.info("charging %s", order, extra={"order": order})
    try:
        raise ValueError("card declined")
    except ValueError:
        log.exception("retrying %s", order)
    return os.getpid()


def log_later(message: str) -> int:
    """Log ``message`` from a thread of the child 0.2 s after the body returned."""

    def later() -> None:
        time.sleep(0.2)
        log.warning(message)

    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


def log_then_block(directory: str, seconds: float) -> None:
    """Log a line, print one (to standard output, not a logger), mark ``started``, then
    block in C for ``seconds``."""
    log.warning("blocking for %ss", seconds)
    print(f"printed before blocking for {seconds}s")
    sleep_in_c(directory, seconds)


def start_process(directory: str, how: str) -> int:
    """Start a process that sleeps a minute, ``how``: ``"subprocess"`` (a program) or
    ``"fork"`` (multiprocessing's fork); mark ``grandchild-<its pid>``; return its pid."""
    if how == "subprocess":
        pid = subprocess.Popen(["sleep", "60"]).pid
    else:
        process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        process.start()
        pid = process.ident or 0
    (Path(directory) / f"grandchild-{pid}").write_text("")
    return pid


def start_then_block(directory: str, how: str, seconds: float) -> None:
    """Start a process (:func:`start_process`), then block in C for ``seconds``."""
    start_process(directory, how)
    sleep_in_c(directory, seconds)


def start_then_crash(directory: str) -> None:
    """Fork a process (:func:`start_process`), then end the child process at once."""
    start_process(directory, "fork")
    crash(directory)


def terminate_what_it_starts() -> list[int | None]:
    """Start a program and a forked process, ``terminate()`` both, and return their exit
    statuses (``-15`` each when SIGTERM ended them)."""
    program = subprocess.Popen(["sleep", "60"])
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    forked.start()
    program.terminate()
    forked.terminate()
    try:
        program.wait(10)
    except subprocess.TimeoutExpired:
        program.kill()
        program.wait()
        return [None, None]
    forked.join(10)
    if forked.exitcode is None:
        forked.kill()
        forked.join()
        return [program.returncode, None]
    return [program.returncode, forked.exitcode]


@dataclass
class Order:
    """A typed argument (a dataclass)."""

    id: str
    quantity: int


class Receipt(BaseModel):
    """A typed result (a pydantic model)."""

    order_id: str
    total: Decimal
    argument_type: str
    pid: int


def charge(order: Order) -> Receipt:
    """Price ``order``; say what type the argument arrived as and which process ran it."""
    return Receipt(
        order_id=order.id,
        total=Decimal("2.50") * order.quantity,
        argument_type=type(order).__qualname__,
        pid=os.getpid(),
    )


def bad_result() -> Receipt:
    """Return what the declared result type does not accept."""
    return 42  # type: ignore[return-value]


class Unprintable(Exception):
    """An exception whose ``__str__`` fails."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


def unprintable() -> None:
    """Raise :class:`Unprintable`."""
    raise Unprintable


async def _later() -> int:
    return 1


def forgot() -> Any:
    """Return a coroutine instead of running it."""
    return _later()


def first_of(items: list[int]) -> int:
    """The first item: ``StopIteration`` for an empty list (a common slip)."""
    return next(iter(items))


def exits(code: int) -> None:
    """Call ``sys.exit(code)`` in the body, as a command-line main() turned task would."""
    sys.exit(code)


def trace_parent() -> list[str]:
    """The trace and span ids of the context the body runs in (hex; zeros for none)."""
    from opentelemetry import trace

    span = trace.get_current_span().get_span_context()
    return [format(span.trace_id, "032x"), format(span.span_id, "016x")]


def declare(target: App) -> dict[str, Any]:
    """Register the tasks on ``target`` under fixed names; returns them by name."""
    return {
        "whoami": target.task(name="pool.whoami")(whoami),
        "sleep_in_c": target.task(name="pool.sleep_in_c", retries=0)(sleep_in_c),
        "limited": target.task(name="pool.limited", time_limit=1, retries=0)(sleep_in_c),
        "limited_retried": target.task(
            name="pool.limited_retried", time_limit=0.5, retries=1, retry_backoff=0.0
        )(sleep_in_c),
        "timed": target.task(name="pool.timed", timeout=1, retries=0)(sleep_in_c),
        "retry_once": target.task(name="pool.retry_once", bind=True, retries=1)(retry_once),
        "block_once": target.task(name="pool.block_once", bind=True)(block_once),
        "fail": target.task(name="pool.fail", retries=0)(fail),
        "crash": target.task(name="pool.crash", retries=3)(crash),
        "chatty": target.task(name="pool.chatty")(chatty),
        "exits": target.task(name="pool.exits", retries=2)(exits),
        "forgot": target.task(name="pool.forgot", retries=0)(forgot),
        "first_of": target.task(name="pool.first_of", retries=0)(first_of),
        "unprintable": target.task(name="pool.unprintable", retries=0)(unprintable),
        "charge": target.task(name="pool.charge", retries=0)(charge),
        "bad_result": target.task(name="pool.bad_result", retries=0)(bad_result),
        "start_then_block": target.task(name="pool.start_then_block", time_limit=1, retries=0)(
            start_then_block
        ),
        "start_then_crash": target.task(name="pool.start_then_crash", retries=3)(start_then_crash),
        "terminate_what_it_starts": target.task(name="pool.terminate_what_it_starts", retries=0)(
            terminate_what_it_starts
        ),
        "log_later": target.task(name="pool.log_later")(log_later),
        "trace_parent": target.task(name="pool.trace_parent", retries=0)(trace_parent),
        "log_then_block": target.task(name="pool.log_then_block", time_limit=1, retries=0)(
            log_then_block
        ),
    }


TASKS = declare(app)
