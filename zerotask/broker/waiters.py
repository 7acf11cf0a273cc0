"""Waiters: the callers waiting for tasks to end, as callbacks by task id.

The core settles them when it records an outcome. With a store shared by several brokers, a task may
end at another broker: the store says so (:meth:`zerotask.store.Store.changes`), and the core settles
the waiters here with the stored outcome. When the store may have missed telling (it reconnected),
every waited-for task is looked up again, a slice per round so that many waiters never stall the loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection

from zerotask.exceptions import UnknownTask
from zerotask.store import Store, TaskRecord
from zerotask.wire import FAILED, FINAL_STATES

OnOutcome = Callable[[TaskRecord], None]  # a waiter: called once with the task in its final state
RECHECK_SLICE = 1000  # waited-for tasks looked up again per round after the store lost track


class Waiters:
    """Each waiter is kept with the owner of the task it asked for (who submitted it), so that when a
    deferred add finds the id taken, only the waiters of the task's owner wait for that task."""

    def __init__(self) -> None:
        self._by_task: dict[str, dict[int, tuple[OnOutcome, str | None]]] = {}
        self._tokens = itertools.count(1)
        self._recheck: list[str] = []

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._by_task

    @property
    def waiting(self) -> Collection[str]:
        """The ids of the tasks someone waits for (a view: ``in`` it costs no call)."""
        return self._by_task.keys()

    def add(self, task_id: str, on_outcome: OnOutcome, owner: str | None = None) -> int:
        """Wait for the task (submitted by ``owner``); returns a token for :meth:`cancel`."""
        token = next(self._tokens)
        self._by_task.setdefault(task_id, {})[token] = (on_outcome, owner)
        return token

    def cancel(self, task_id: str, token: int) -> None:
        waiting = self._by_task.get(task_id)
        if waiting is not None:
            waiting.pop(token, None)
            if not waiting:
                del self._by_task[task_id]

    def settle(self, record: TaskRecord) -> None:
        """Call, once, everything waiting for this task, with the task as it ended."""
        for on_outcome, _ in self._by_task.pop(record.id, {}).values():
            on_outcome(record)

    def catch_up(self, store: Store, held: Callable[[str], bool]) -> list[str]:
        """Settle the waiters of the tasks that ended at other brokers (:meth:`Store.changes`; all waited-for
        tasks, a slice per call, once the store lost track). Returns the ids of those tasks that
        ``held`` says a node here holds (it must stop them)."""
        changes = store.changes()
        if changes.lost_track:
            self._recheck = list(self._by_task)
        ended_held = []
        taken, self._recheck = self._recheck[-RECHECK_SLICE:], self._recheck[:-RECHECK_SLICE]
        wanted = [task_id for task_id in itertools.chain(changes.finished, taken) if task_id in self._by_task or held(task_id)]
        for task_id, record in zip(wanted, store.get_many(wanted), strict=True):  # one round trip for them all
            if record is None or record.state not in FINAL_STATES:
                continue
            if held(task_id):
                ended_held.append(task_id)
            self.settle(record)
        return ended_held

    def refused(self, store: Store, record: TaskRecord) -> None:
        """A deferred add found the id taken: its owner's waiters wait for the task that has it (a caller
        asking again); anyone else's get UnknownTask, as for an id they may not see."""
        existing = store.get(record.id)
        waiting = self._by_task.get(record.id, {})
        error = UnknownTask(f"unknown task id {record.id!r}", {"task_id": record.id}).to_error_object()
        unknown = TaskRecord(record.id, record.method, state=FAILED, error=error)
        for token, (on_outcome, owner) in list(waiting.items()):
            if existing is None or owner != existing.owner:
                self.cancel(record.id, token)
                on_outcome(unknown)
        if existing is not None and existing.state in FINAL_STATES:
            self.settle(existing)

    @property
    def rechecking(self) -> bool:
        return bool(self._recheck)
