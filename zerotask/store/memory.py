"""MemoryStore: the queue and results in this process's memory. Fast, volatile, the test stand-in."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any

from zerotask.store import FINAL_STATES, QUEUED, Store, TaskRecord


class MemoryStore(Store):
    def __init__(self) -> None:
        self._records: dict[str, TaskRecord] = {}
        self._sequence: dict[str, int] = {}
        # One min-heap of (sequence, task id) per method: FIFO, and a requeued task keeps its place.
        # Entries whose task is no longer QUEUED are dropped lazily when they reach the top.
        self._queues: dict[str, list[tuple[int, str]]] = {}
        self._queued: dict[str, int] = {}
        self._next_sequence = 0
        self._finished: deque[tuple[float, str]] = deque()  # (when, task id), in the order they ended

    def add(self, record: TaskRecord) -> bool:
        if record.id in self._records:
            return False
        record.state = QUEUED
        self._records[record.id] = record
        self._next_sequence += 1
        self._sequence[record.id] = self._next_sequence
        self._push(record)
        return True

    def _push(self, record: TaskRecord) -> None:
        heapq.heappush(self._queues.setdefault(record.method, []), (self._sequence[record.id], record.id))
        self._queued[record.method] = self._queued.get(record.method, 0) + 1

    def take(self, methods: Collection[str], limit: int) -> list[TaskRecord]:
        taken: list[TaskRecord] = []
        heads = [(method, queue) for method in methods if (queue := self._queues.get(method))]
        while len(taken) < limit and heads:
            method, queue = min(heads, key=lambda head: head[1][0][0])
            _, task_id = heapq.heappop(queue)
            record = self._records.get(task_id)
            if record is not None and record.state == QUEUED and record.method == method:
                record.state = "ASSIGNED"
                self._queued[method] -= 1
                taken.append(record)
            if not queue:
                heads = [(m, q) for m, q in heads if q]
        return taken

    def set_state(self, task_id: str, state: str, attempts: int | None = None) -> None:
        record = self._records.get(task_id)
        if record is None or record.state in FINAL_STATES:
            return
        if attempts is not None:
            record.attempts = attempts
        if state == record.state:
            return
        if record.state == QUEUED:
            # Leaves the queue; its heap entry is dropped when it surfaces.
            self._queued[record.method] -= 1
        record.state = state
        if state == QUEUED:
            self._push(record)

    def finish(self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None) -> bool:
        record = self._records.get(task_id)
        if record is None or record.state in FINAL_STATES:
            return False
        if record.state == QUEUED:
            self._queued[record.method] -= 1
        record.state = state
        record.result = result
        record.error = error
        # The call is no longer needed: drop its arguments so finished tasks cost only their result.
        record.args = []
        record.kwargs = {}
        del self._sequence[task_id]
        self._finished.append((time.time(), task_id))
        return True

    def expire(self, before: float, limit: int = 10_000) -> int:
        expired = 0
        while self._finished and self._finished[0][0] < before and expired < limit:
            _, task_id = self._finished.popleft()
            self._records.pop(task_id, None)
            expired += 1
        return expired

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def unfinished(self) -> Iterable[TaskRecord]:
        return [record for record in self._records.values() if record.state not in FINAL_STATES]

    def queued_counts(self) -> dict[str, int]:
        return {method: count for method, count in self._queued.items() if count}
