"""Store: where the broker keeps the queue and the results.

One interface, several implementations: :class:`MemoryStore` (volatile, fast, the test stand-in) and
:class:`SqliteStore` (durable, the default). The broker calls the store from its one thread only.
Writes become durable at :meth:`Store.flush`; the broker flushes before it acknowledges anything,
which is what lets many tasks share one commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

QUEUED = "QUEUED"
ASSIGNED = "ASSIGNED"
RUNNING = "RUNNING"
RETRY = "RETRY"
FINISHED = "FINISHED"
FAILED = "FAILED"
REVOKED = "REVOKED"
FINAL_STATES = frozenset({FINISHED, FAILED, REVOKED})
STATES = (QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED, REVOKED)


@dataclass(slots=True)
class TaskRecord:
    """One task: what to call, where it stands, and how it ended (``result`` or ``error``)."""

    id: str
    method: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    state: str = QUEUED
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # per-call delivery options, e.g. time_limit_s

    def to_wire(self) -> dict[str, Any]:
        """The task as a node receives it."""
        wire = {"task_id": self.id, "method": self.method, "args": self.args, "kwargs": self.kwargs, "attempt": self.attempts}
        if self.options:
            wire.update(self.options)
        return wire


class Store(ABC):
    """The broker's queue and result store. Task ids are unique; methods never raise for an unknown id."""

    @abstractmethod
    def add(self, record: TaskRecord) -> bool:
        """Queue a new task (state QUEUED). Returns False, and changes nothing, if the id exists."""

    @abstractmethod
    def take(self, methods: Collection[str], limit: int) -> list[TaskRecord]:
        """Atomically move up to ``limit`` of the oldest QUEUED tasks whose method is in ``methods``
        to ASSIGNED, and return them, oldest first. Returns [] when none is queued."""

    @abstractmethod
    def set_state(self, task_id: str, state: str, attempts: int | None = None) -> None:
        """Set a task that is not final to a non-final state (RUNNING, RETRY, ...). A task that goes
        back to QUEUED keeps its place: it is taken before tasks queued after it."""

    @abstractmethod
    def finish(self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None) -> bool:
        """Record the end of a task (FINISHED, FAILED or REVOKED) unless it already has one.
        Returns True if this call recorded it."""

    def finish_unfinished(self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None) -> None:
        """:meth:`finish` for a task the caller knows has no outcome yet: no answer, so the store may
        batch the write (it is durable at the next :meth:`flush`, and visible to every read before)."""
        self.finish(task_id, state, result, error)

    @abstractmethod
    def expire(self, before: float, limit: int = 10_000) -> int:
        """Forget up to ``limit`` tasks whose outcome was recorded before ``before`` (a ``time.time()``
        value), oldest first. Returns how many were forgotten; unfinished tasks are never touched."""

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None if the id is unknown."""

    @abstractmethod
    def unfinished(self) -> Iterable[TaskRecord]:
        """Every task that is not in a final state (for recovery when the broker starts)."""

    @abstractmethod
    def queued_counts(self) -> dict[str, int]:
        """How many tasks are QUEUED, by method."""

    def flush(self) -> None:  # noqa: B027 - a no-op unless the store has something to make durable
        """Make every write so far durable (a no-op for volatile stores)."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()

    def requeue_unfinished(self) -> int:
        """Put every ASSIGNED, RUNNING or RETRY task back to QUEUED (no node holds it any more when the
        broker starts). Returns how many tasks are queued afterwards."""
        queued = 0
        for record in list(self.unfinished()):
            if record.state != QUEUED:
                self.set_state(record.id, QUEUED)
            queued += 1
        self.flush()
        return queued


def open_store(spec: str) -> Store:
    """``memory`` for a MemoryStore, anything else is the path of an SQLite database file."""
    if spec == "memory":
        from zerotask.store.memory import MemoryStore

        return MemoryStore()
    from zerotask.store.sqlite import SqliteStore

    return SqliteStore(spec)


__all__ = [
    "ASSIGNED",
    "FAILED",
    "FINAL_STATES",
    "FINISHED",
    "QUEUED",
    "RETRY",
    "REVOKED",
    "RUNNING",
    "STATES",
    "Store",
    "TaskRecord",
    "open_store",
]
