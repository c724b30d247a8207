"""The kernel below the engines: settings, backends, registry, hooks, the loop and the
send path, with a small public API that the worker, beat, canvas and operations use.

``App`` builds a :class:`Kernel` and offers the public API over it (``app.kernel`` is the
seam for engines and tests); nothing here imports ``App`` or an engine.
"""

from .backends import Backends
from .enqueue import Enqueuer, Plan
from .hooks import Hook, Hooks, run_hooks
from .kernel import Continuation, Kernel
from .loop import LOOP_CHOICES, LOOP_ENV, LoopThread, loop_kind
from .prepare import (
    CALL_OPTIONS,
    SEND_OPTIONS,
    CallOptions,
    Prepared,
    SendOptions,
    check_call_options,
    check_call_values,
    message_for,
    prepare,
    queued_event,
    queued_record,
)
from .registry import TaskRegistry
from .service import Service, ServiceGroup, Services, Stoppable
from .settings import Settings, make_broker, make_results
from .taskdef import TaskDef

__all__ = [
    "CALL_OPTIONS",
    "LOOP_CHOICES",
    "LOOP_ENV",
    "SEND_OPTIONS",
    "Backends",
    "CallOptions",
    "Continuation",
    "Enqueuer",
    "Hook",
    "Hooks",
    "Kernel",
    "LoopThread",
    "Plan",
    "Prepared",
    "SendOptions",
    "Service",
    "ServiceGroup",
    "Services",
    "Settings",
    "Stoppable",
    "TaskDef",
    "TaskRegistry",
    "check_call_options",
    "check_call_values",
    "loop_kind",
    "make_broker",
    "make_results",
    "message_for",
    "prepare",
    "queued_event",
    "queued_record",
    "run_hooks",
]
