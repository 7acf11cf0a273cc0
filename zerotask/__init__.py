"""zerotask: a distributed task system over ZeroMQ and JSON-RPC 2.0."""

from zerotask.exceptions import (
    Forbidden,
    InvalidParams,
    NotReady,
    ProtocolError,
    QueueFull,
    RemoteError,
    TaskError,
    TaskRevoked,
    TaskTimeout,
    UnknownMethod,
    UnknownTask,
    ZerotaskError,
)
from zerotask.progress import report_progress
from zerotask.task import task

__version__ = "0.1.0"

__all__ = [
    "Forbidden",
    "InvalidParams",
    "NotReady",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "TaskError",
    "TaskRevoked",
    "TaskTimeout",
    "UnknownMethod",
    "UnknownTask",
    "ZerotaskError",
    "__version__",
    "report_progress",
    "task",
]
