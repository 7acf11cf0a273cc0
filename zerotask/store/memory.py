"""MemoryStore: the queue and outcomes in this process's memory. Fast, volatile, the test stand-in.

It holds at most ``max_tasks`` tasks (queued, held and finished together): a day of outcomes at full
speed does not fit in memory. When full, it forgets the oldest outcomes first, before their time, and
refuses a new task (QueueFull) only when every task it holds is unfinished. Waiting tasks' arguments
count for at most ``max_bytes``: so the store's size is bounded in bytes, not only in tasks. Large ones
are kept as the JSON they came as (Python objects take up to 14 times the room); small ones count for
INFLATION times the request they came in, until a node takes the task (a task claimed, retried or ended
while queued: until its entry in the queue reaches the front, see memory_queue).

The order of the waiting tasks is kept by :class:`~zerotask.store.memory_queue.MemoryQueue`, in 16
bytes per queued task; with the record in ``_records``, a queued task costs the store ~40 bytes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from zerotask import jsonrpc
from zerotask.exceptions import QueueFull
from zerotask.store.base import (
    MAX_REMEMBERED_METHODS,
    MAX_UNIQUE_LOCKS,
    METHODS_REMEMBERED_S,
    NO_ENTRIES,
    Outcome,
    Store,
    TaskRecord,
    Want,
    want_parts,
)
from zerotask.store.memory_queue import MemoryQueue
from zerotask.wire import ASSIGNED, FINAL_STATES, FINISHED, QUEUED, RETRY, SCHEDULED

DEFAULT_MAX_TASKS = 2_000_000  # about 1.5 GB of small tasks
DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024  # what waiting tasks' arguments count for, together
PACK_OVER_BYTES = 1024  # a task whose JSON is larger keeps its arguments packed while it waits
# What a small task counts for, per byte of the request it came in: its arguments as Python objects, and
# the request's own envelope, which the hint includes (a million small adds count for about 1 GB).
INFLATION = 8


class MemoryStore(Store):
    holds_at_add = True

    def __init__(self, max_tasks: int = DEFAULT_MAX_TASKS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.clock: Callable[[], float] = _wall_clock  # what "now" is (a store that reads tasks back sets its own)
        self._packed: dict[str, bytes] = {}  # task id -> [args, kwargs] as JSON, until a node takes it
        self._packed_bytes = 0  # of _packed's JSON, together
        self._records: dict[str, TaskRecord] = {}
        # The waiting tasks in order, and the size hints of the ones not packed: what their arguments count
        # for is INFLATION times that (kept with each task's place, not in a dict of its own).
        self._queue = MemoryQueue()
        self._states: Counter[str] = Counter()  # tasks by state, QUEUED excepted (that is the queue's)
        self._finished: deque[tuple[float, str]] = deque()  # (when, task id), in the order they ended
        self._methods: dict[str, float] = {}  # task name -> when a node last announced it, oldest first
        self._slots: dict[str, float] = {}  # periodic task name -> the latest slot taken, least recent first
        self._locks: dict[str, tuple[str, float]] = {}  # unique key -> (task id, until), oldest first

    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        if record.id in self._records:
            return False
        self._room_for_one()
        # Small arguments stay as they are (packing costs an encode and a decode per task); large ones
        # are packed. Both count against max_bytes: small ones at what Python objects may take.
        packed = jsonrpc.dumps_kept([record.args, record.kwargs]) if size_hint > PACK_OVER_BYTES else None
        charge = len(packed) if packed is not None else size_hint * INFLATION
        if self._charged_bytes() + charge > self.max_bytes:
            self.expire(float("inf"), limit=max(1, self.max_tasks // 100))
            if self._charged_bytes() + charge > self.max_bytes:
                limit = self.max_bytes
                raise QueueFull(f"the memory store holds {limit} bytes of arguments", {"limit": limit, "bound": "store"})
        now = self.clock()
        record.state = SCHEDULED if record.due_at is not None and record.due_at > now else QUEUED
        record.created_at = now if record.created_at is None else record.created_at
        record.finished_at = None
        stored = record
        if packed is not None:
            # The store keeps its own record, arguments packed; the caller's keeps them (a broker task runs on it).
            stored = TaskRecord(record.id, record.method, state=record.state, attempts=record.attempts, options=record.options)
            stored.owner, stored.created_at = record.owner, record.created_at
            stored.queue, stored.priority, stored.due_at = record.queue, record.priority, record.due_at
            self._packed[record.id] = packed
            self._packed_bytes += len(packed)
        self._records[record.id] = stored
        hint = size_hint if packed is None else 0  # (at most PACK_OVER_BYTES: it fits a place's key)
        if stored.state == SCHEDULED:
            self._states[SCHEDULED] += 1
            self._queue.schedule(stored, hint)
        else:
            self._queue.append(stored, hint)
        return True

    def add_held(self, record: TaskRecord, size_hint: int = 0) -> bool:
        # Not queued at all, so nothing to take later: no line entry, no packing (a node gets its arguments
        # now), no charge (a held task's arguments count for nothing, as a taken one's).
        if record.id in self._records:
            return False
        self._room_for_one()
        record.state = ASSIGNED
        record.created_at = self.clock() if record.created_at is None else record.created_at
        record.finished_at = None
        self._records[record.id] = record
        self._states[ASSIGNED] += 1
        self._queue.hold(record)
        return True

    def _room_for_one(self) -> None:
        """Raise QueueFull if the store holds ``max_tasks`` tasks, after forgetting the oldest outcomes."""
        if len(self._records) >= self.max_tasks:
            self.expire(float("inf"), limit=max(1, self.max_tasks // 100))  # the oldest outcomes go first
            if len(self._records) >= self.max_tasks:
                limit = self.max_tasks
                raise QueueFull(f"the memory store holds {limit} unfinished tasks", {"limit": limit, "bound": "store"})

    def _charged_bytes(self) -> int:
        """What the waiting tasks' arguments count for, together."""
        return self._queue.hints * INFLATION + self._packed_bytes

    def _unpack(self, record: TaskRecord) -> TaskRecord:
        """Give the record its arguments back (a node is about to get it), freeing their JSON."""
        if self._packed and (packed := self._packed.pop(record.id, None)) is not None:
            self._packed_bytes -= len(packed)
            record.args, record.kwargs = jsonrpc.loads(packed)
        return record

    def _drop_packed(self, task_id: str) -> None:
        if self._packed and (packed := self._packed.pop(task_id, None)) is not None:
            self._packed_bytes -= len(packed)

    def _leave_queue(self, record: TaskRecord, state: str) -> None:
        """Move a task out of QUEUED otherwise than taken from the front of its line."""
        self._set(record, state)
        self._queue.leave(record)

    def _set(self, record: TaskRecord, state: str | None) -> None:
        """Change a task's state (None: it is forgotten), keeping the counts by state."""
        if record.state != QUEUED:
            self._states[record.state] -= 1
            if not self._states[record.state]:
                del self._states[record.state]
        if state is not None:
            if state != QUEUED:
                self._states[state] += 1
            record.state = state

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        return [self._take(*want_parts(want)) for want in wants]

    def _take(self, methods: Iterable[str], limit: int, queues: Iterable[str]) -> list[TaskRecord]:
        queued = self._queue.counts
        # (each lane once: a want's names and queues are sets, from the broker; anything else is made one)
        names = methods if isinstance(methods, frozenset | set) else set(methods)
        queues = queues if isinstance(queues, frozenset | set) else set(queues)
        lanes = [(queue, method) for method in names if method in queued for queue in queues]
        if not lanes or limit <= 0:
            return []
        taken = self._queue.take(lanes, limit)
        if taken:
            for record in taken:
                record.state = ASSIGNED
            self._states[ASSIGNED] += len(taken)
            if self._packed:
                taken = [self._unpack(record) for record in taken]
        return taken

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        claimed = []
        for task_id in task_ids:
            record = self._records.get(task_id)
            if record is None or record.state in FINAL_STATES or record.state == SCHEDULED:
                continue
            if record.state == QUEUED:
                self._leave_queue(record, ASSIGNED)
            else:
                self._set(record, ASSIGNED)
            claimed.append(self._unpack(record))
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            record = self._records.get(task_id)
            if record is not None and record.state in (ASSIGNED, RETRY):
                self._set(record, QUEUED)
                self._queue.requeue(record)

    def retry(self, task_id: str, attempts: int) -> None:
        record = self._records.get(task_id)
        if record is None or record.state in FINAL_STATES:
            return
        if record.state == QUEUED:
            self._leave_queue(record, RETRY)
        else:
            self._set(record, RETRY)
        record.attempts = attempts

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        recorded = []
        ended: list[str] = []
        now = self.clock()
        records, states, finished = self._records, self._states, self._finished
        for outcome in outcomes:
            record = records.get(outcome.task_id)
            if record is None or record.state in FINAL_STATES:
                recorded.append(False)
                continue
            state = outcome.state
            if record.state == QUEUED:
                self._leave_queue(record, state)
            elif record.state != state:  # _set(record, state), inline: this runs for every task
                left = states[record.state] - 1
                if left:
                    states[record.state] = left
                else:
                    del states[record.state]
                states[state] += 1
                record.state = state
            record.result = outcome.result
            record.error = outcome.error
            record.finished_at = now
            if state == FINISHED:
                # The call is no longer needed: drop its arguments so finished tasks cost only their result.
                # A failed or revoked task keeps them, to be reset (retried by an operator).
                record.args = []
                record.kwargs = NO_ENTRIES
                if self._packed:
                    self._drop_packed(record.id)
            ended.append(record.id)
            finished.append((now, record.id))
            recorded.append(True)
        self._queue.forget(ended)
        return recorded

    def expire(self, before: float, limit: int = 10_000) -> int:
        expired = 0
        while self._finished and self._finished[0][0] < before and expired < limit:
            when, task_id = self._finished.popleft()
            record = self._records.get(task_id)
            if record is None or record.finished_at != when or record.state not in FINAL_STATES:
                continue  # left from an outcome that reset cleared
            self._set(record, None)
            del self._records[task_id]
            self._drop_packed(task_id)
            expired += 1
        return expired

    def due(self, now: float, limit: int = 10_000) -> int:
        due = self._queue.due(now, limit)
        for record in due:
            self._set(record, QUEUED)
        return len(due)

    def claim_slot(self, name: str, slot: float) -> bool:
        if self._slots.get(name, -math.inf) >= slot:
            return False
        self._slots.pop(name, None)
        self._slots[name] = slot
        while len(self._slots) > MAX_REMEMBERED_METHODS:
            del self._slots[next(iter(self._slots))]
        return True

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        held = self._locks.get(key)
        if held is not None and held[0] != task_id and held[1] > self.clock():
            holder = self._records.get(held[0])
            if holder is not None and holder.state not in FINAL_STATES:
                return held[0]
        self._locks.pop(key, None)
        self._locks[key] = (task_id, until)
        while len(self._locks) > MAX_UNIQUE_LOCKS:
            del self._locks[next(iter(self._locks))]
        return None

    def next_due(self) -> float | None:
        return self._queue.next_due()

    def get(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        return None if record is None else self._view(record)

    def _view(self, record: TaskRecord) -> TaskRecord:
        """The record with its arguments: a copy if they are packed (the store keeps them packed)."""
        packed = self._packed.get(record.id)
        if packed is None:
            return record
        copy = TaskRecord(record.id, record.method, state=record.state, attempts=record.attempts, options=record.options)
        copy.owner, copy.created_at, copy.finished_at = record.owner, record.created_at, record.finished_at
        copy.queue, copy.priority, copy.due_at = record.queue, record.priority, record.due_at
        copy.result, copy.error = record.result, record.error
        copy.args, copy.kwargs = jsonrpc.loads(packed)
        return copy

    def queued_counts(self) -> Mapping[str, int]:
        return self._queue.counts

    def state_counts(self) -> Mapping[str, int]:
        queued = sum(self._queue.counts.values())
        return {QUEUED: queued, **self._states} if queued else dict(self._states)

    def oldest_queued(self) -> Mapping[str, float]:
        firsts = self._queue.first_in_line().items()
        return {method: record.created_at if record.created_at is not None else self.clock() for method, record in firsts}

    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        def wanted(record: TaskRecord) -> bool:
            at = _time(record)
            return (
                (state is None or record.state == state)
                and (method is None or record.method == method)
                and (before is None or at < before)
            )

        if state is None:  # a scan: the memory store keeps no index across states
            return [self._view(r) for r in heapq.nlargest(max(limit, 0), filter(wanted, self._records.values()), key=_time)]
        candidates: Iterator[TaskRecord]
        if state in FINAL_STATES:  # newest outcome first
            candidates = (
                record
                for when, task_id in reversed(self._finished)
                if (record := self._records.get(task_id)) is not None and record.finished_at == when
            )
        else:  # the records are in the order they were queued (reset moves a task to the end)
            candidates = reversed(self._records.values())
        return [self._view(record) for record in itertools.islice(filter(wanted, candidates), max(limit, 0))]

    def reset(self, task_id: str) -> bool:
        record = self._records.get(task_id)
        if record is None or record.state not in FINAL_STATES or record.state == FINISHED:
            return False
        self._set(record, QUEUED)
        record.attempts, record.result, record.error = 0, None, None
        record.created_at, record.finished_at, record.due_at = self.clock(), None, None
        del self._records[task_id]
        self._records[task_id] = record  # to the end: the records stay in the order they were queued
        self._queue.append(record)  # in a new place, at the back
        return True

    def recover(self) -> int:
        self.requeue([record.id for record in self._records.values() if record.state in (ASSIGNED, RETRY)])
        return sum(self._queue.counts.values())

    def remember_methods(self, methods: Iterable[str]) -> None:
        now = self.clock()
        for method in methods:
            self._methods.pop(method, None)  # to the end: the dict stays ordered by when it was announced
            self._methods[method] = now
        while len(self._methods) > MAX_REMEMBERED_METHODS:
            del self._methods[next(iter(self._methods))]

    def known_methods(self) -> Collection[str]:
        cutoff = self.clock() - METHODS_REMEMBERED_S
        while self._methods and next(iter(self._methods.values())) < cutoff:
            del self._methods[next(iter(self._methods))]
        return self._methods.keys()


def _time(record: TaskRecord) -> float:
    """A task's time for listing: when it ended, or else when it was queued."""
    return record.finished_at or record.created_at or 0.0


def _wall_clock() -> float:
    return time.time()  # (looked up at each call: tests move time.time)
