"""MemoryStore: the queue and outcomes in this process's memory. Fast, volatile, the test stand-in.

It holds at most ``max_tasks`` tasks (queued, held and finished together): a day of outcomes at full
speed does not fit in memory. When full, it forgets the oldest outcomes first, before their time, and
refuses a new task (QueueFull) only when every task it holds is unfinished.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from zerotask.exceptions import QueueFull
from zerotask.store.base import Outcome, Store, TaskRecord, Want
from zerotask.wire import ASSIGNED, FINAL_STATES, QUEUED, RETRY

DEFAULT_MAX_TASKS = 2_000_000  # about 1.5 GB of small tasks


class MemoryStore(Store):
    def __init__(self, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        self.max_tasks = max_tasks
        self._records: dict[str, TaskRecord] = {}
        self._sequence: dict[str, int] = {}  # task id -> its place in the queue, kept until it ends
        # One min-heap of (sequence, task id) per method: FIFO, and a requeued task keeps its place.
        # Entries whose task is no longer QUEUED, or that are left from an expired task whose id was
        # added again, are dropped lazily when they reach the top.
        self._queues: dict[str, list[tuple[int, str]]] = {}
        self._queued: dict[str, int] = {}
        self._next_sequence = 0
        self._finished: deque[tuple[float, str]] = deque()  # (when, task id), in the order they ended

    def add(self, record: TaskRecord) -> bool:
        if record.id in self._records:
            return False
        if len(self._records) >= self.max_tasks:
            self.expire(float("inf"), limit=max(1, self.max_tasks // 100))  # the oldest outcomes go first
            if len(self._records) >= self.max_tasks:
                limit = self.max_tasks
                raise QueueFull(f"the memory store holds {limit} unfinished tasks", {"limit": limit, "bound": "store"})
        record.state = QUEUED
        self._records[record.id] = record
        self._next_sequence += 1
        self._sequence[record.id] = self._next_sequence
        self._push(record)
        return True

    def _push(self, record: TaskRecord) -> None:
        heapq.heappush(self._queues.setdefault(record.method, []), (self._sequence[record.id], record.id))
        self._queued[record.method] = self._queued.get(record.method, 0) + 1

    def _leave_queue(self, record: TaskRecord, state: str) -> None:
        """Move a task out of QUEUED; its heap entry is dropped when it surfaces."""
        self._queued[record.method] -= 1
        if not self._queued[record.method]:
            del self._queued[record.method]
        record.state = state

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        return [self._take(methods, limit) for methods, limit in wants]

    def _take(self, methods: Iterable[str], limit: int) -> list[TaskRecord]:
        taken: list[TaskRecord] = []
        heads = [(method, queue) for method in set(methods) if (queue := self._queues.get(method))]
        while len(taken) < limit and heads:
            _, queue = min(heads, key=lambda head: head[1][0][0])
            sequence, task_id = heapq.heappop(queue)
            record = self._records.get(task_id)
            if record is not None and record.state == QUEUED and self._sequence[task_id] == sequence:
                self._leave_queue(record, ASSIGNED)
                taken.append(record)
            if not queue:
                heads = [(m, q) for m, q in heads if q]
        return taken

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        claimed = []
        for task_id in task_ids:
            record = self._records.get(task_id)
            if record is None or record.state in FINAL_STATES:
                continue
            if record.state == QUEUED:
                self._leave_queue(record, ASSIGNED)
            record.state = ASSIGNED
            claimed.append(record)
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            record = self._records.get(task_id)
            if record is not None and record.state in (ASSIGNED, RETRY):
                record.state = QUEUED
                self._push(record)

    def retry(self, task_id: str, attempts: int) -> None:
        record = self._records.get(task_id)
        if record is None or record.state in FINAL_STATES:
            return
        if record.state == QUEUED:
            self._leave_queue(record, RETRY)
        record.state = RETRY
        record.attempts = attempts

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        recorded = []
        now = time.time()
        for outcome in outcomes:
            record = self._records.get(outcome.task_id)
            if record is None or record.state in FINAL_STATES:
                recorded.append(False)
                continue
            if record.state == QUEUED:
                self._leave_queue(record, outcome.state)
            record.state = outcome.state
            record.result = outcome.result
            record.error = outcome.error
            # The call is no longer needed: drop its arguments so finished tasks cost only their result.
            record.args = []
            record.kwargs = {}
            del self._sequence[record.id]
            self._finished.append((now, record.id))
            recorded.append(True)
        return recorded

    def expire(self, before: float, limit: int = 10_000) -> int:
        expired = 0
        while self._finished and self._finished[0][0] < before and expired < limit:
            _, task_id = self._finished.popleft()
            self._records.pop(task_id, None)
            expired += 1
        return expired

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def queued_counts(self) -> Mapping[str, int]:
        return self._queued

    def recover(self) -> int:
        self.requeue([record.id for record in self._records.values() if record.state in (ASSIGNED, RETRY)])
        return sum(self._queued.values())
