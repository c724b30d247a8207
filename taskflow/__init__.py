"""taskflow: a typed, prioritized, distributed task queue.

Quick start::

    from taskflow import App

    app = App("shop")                 # memory:// by default; redis://, rediss://, nats://

    @app.task(priority=5, retries=3)
    def add(x: int, y: int) -> int:
        return x + y

    with app.worker(concurrency=4):
        assert add.delay(2, 3).get(timeout=5) == 5
"""

from .app import App
from .canvas import ChainResult, ChordResult, GroupResult, chain, chord, group
from .clock import Clock, FakeClock, SystemClock
from .context import TaskContext, current_task
from .errors import (
    BrokerError,
    ConfigError,
    DuplicateTask,
    IdempotencyConflict,
    NotFound,
    NotRegistered,
    PayloadError,
    QueueFull,
    Reject,
    ResultTimeout,
    Retry,
    TaskCancelled,
    TaskFailed,
    TaskflowError,
    TaskTimeout,
)
from .eventbus import TaskEvent
from .message import Envelope, TaskStatus
from .middleware import Middleware
from .results.base import TaskInfo
from .results.handle import AsyncResult
from .task import Signature, Task

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "BrokerError",
    "ChainResult",
    "ChordResult",
    "Clock",
    "ConfigError",
    "DuplicateTask",
    "Envelope",
    "FakeClock",
    "GroupResult",
    "IdempotencyConflict",
    "Middleware",
    "NotFound",
    "NotRegistered",
    "PayloadError",
    "QueueFull",
    "Reject",
    "ResultTimeout",
    "Retry",
    "Signature",
    "SystemClock",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskEvent",
    "TaskFailed",
    "TaskInfo",
    "TaskStatus",
    "TaskTimeout",
    "TaskflowError",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "group",
]
