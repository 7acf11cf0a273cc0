"""SqliteStore: the durable embedded default. One file, WAL journal, one commit per flush.

The broker is the file's only writer, so the store answers from memory and uses the file to make what
it holds durable: unfinished tasks and recent outcomes are kept by a :class:`~zerotask.store.memory.MemoryStore`
(bounded alike: QueueFull beyond its max_tasks or max_bytes of unfinished tasks), and each flush
appends what changed to the file's journal as one row (:mod:`zerotask.store.sqlite_journal`), read back
when the file is opened. Outcomes move on to the ``tasks`` table (:mod:`zerotask.store.sqlite_archive`)
in batches, once more than ARCHIVE_OVER are recent or one is older than ARCHIVE_AFTER_S: there they
cost disk, not memory, and are found by id and by time until they expire.

``synchronous=NORMAL`` with WAL makes each commit survive the broker being killed (the data is in the
operating system once ``COMMIT`` returns) without an fsync per commit; pass ``synchronous="FULL"``
to survive power loss as well, at the cost of one fsync per flush.

An add looks its id up in the archive (a query of about 2 µs, while the archive is not empty).
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

from zerotask.store.base import Outcome, Store, TaskRecord, Want
from zerotask.store.memory import MemoryStore
from zerotask.store.sqlite_archive import SqliteArchive
from zerotask.store.sqlite_journal import ADDED, DUE, FORGOT, HELD, OUTCOMES, REQUEUED, RETRIED, Op, SqliteJournal, put, snapshot
from zerotask.store.sqlite_registry import SqliteRegistry
from zerotask.wire import ASSIGNED, DEFAULT_QUEUE, FAILED, FINAL_STATES, QUEUED, RETRY, REVOKED, SCHEDULED

# Outcomes kept in memory (a few hundred bytes each for small results): beyond, the oldest are archived.
ARCHIVE_OVER = 100_000
ARCHIVE_AFTER_S = 60.0  # and outcomes older than this are, so that an idle broker's memory empties
ARCHIVE_BATCH = 20_000  # outcomes archived by one flush at most (about 0.2 s of writes)
# The journal is rewritten as a snapshot once it holds this many ops, and REWRITE_RATIO times as many as
# tasks held (unfinished, and recent outcomes): it costs as much as writing those tasks once, at most
# once per REWRITE_RATIO times as many ops.
REWRITE_OVER = 200_000
REWRITE_RATIO = 4


class SqliteStore(Store):
    holds_at_add = True

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        _create_private(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the archive's id index stays in memory
        self._in_transaction = False
        self._memory = MemoryStore()  # the unfinished tasks and the recent outcomes
        # room for the recent outcomes, so that it never forgets one to make room (they are archived first)
        self._memory.max_tasks += ARCHIVE_OVER
        self._live: dict[str, None] = {}  # the unfinished tasks' ids, in the order they were queued (for a snapshot)
        self._done: dict[str, None] = {}  # the recent outcomes' ids, in the order they were recorded
        self._ops: list[Op] = []  # what changed since the last flush, for the journal
        # (Each of these runs a script, which commits first: before the transaction begins.)
        self._archive = SqliteArchive(self._db)
        self._journal = SqliteJournal(self._db)
        self._registry = SqliteRegistry(self._db, self._begin, self._live.__contains__)
        self._begin()
        # A file of the version before the journal kept its unfinished tasks in the archive's table.
        first = snapshot(self._archive.take_unfinished(), ())
        self._archived: Counter[str] = self._archive.counts()  # archived tasks by state
        live, done = self._journal.replay(first)
        self._load(live, done)
        if first:
            self._journal.rewrite(self._snapshot())
        self.flush()

    def _load(self, live: list[TaskRecord], done: list[TaskRecord]) -> None:
        memory, held = self._memory, []
        bound = memory.max_tasks
        memory.max_tasks = max(bound, len(live) + len(done) + 1)  # what was accepted stays
        # The memory store makes a task SCHEDULED if its due_at is later than time.time(), and records an
        # outcome at time.time(): read back, each task is as the journal left it, whatever the time now (a
        # task whose time came waits for due() still; an outcome keeps its time, and expires by it).
        clock = _Clock()
        memory.clock, wall_clock = clock.time, memory.clock
        try:
            for record in live:
                state, attempts = record.state, record.attempts
                clock.now = -math.inf if state == SCHEDULED else math.inf
                memory.add(record)
                self._live[record.id] = None
                if state == ASSIGNED:
                    held.append(record.id)
                elif state == RETRY:
                    memory.retry(record.id, attempts)
            memory.claim(held)
            for record in done:  # in the order they were recorded
                clock.now = record.finished_at or 0.0
                outcome = Outcome(record.id, record.state, record.result, record.error)
                if memory.add(record) and memory.finish_many([outcome])[0]:
                    self._done[record.id] = None
        finally:
            memory.clock = wall_clock
            memory.max_tasks = bound

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def add_held(self, record: TaskRecord, size_hint: int = 0) -> bool:
        return self.add(record, size_hint, held=True)

    def add(self, record: TaskRecord, size_hint: int = 0, held: bool = False) -> bool:
        """(``held``: as :meth:`add_held`. One body for both, and one Python call per add: a call more
        cost 7% of what this store adds to the memory store's work per task.)"""
        if self._archive.size and self._archive.has(record.id):
            return False
        memory = self._memory
        if not (memory.add_held(record, size_hint) if held else memory.add(record, size_hint)):
            return False
        self._live[record.id] = None
        # The caller's record has its arguments unpacked, and the state the memory store gave it: QUEUED,
        # SCHEDULED, or ASSIGNED if held. Most tasks are ADDED ops, the journal's short PUT (checked here,
        # not in a function of the journal's: a call more per task costs 4%).
        if (
            record.state == QUEUED
            and not record.options
            and record.queue == DEFAULT_QUEUE
            and not record.priority
            and record.due_at is None
            and record.owner is None
            and not record.attempts
        ):
            self._ops.append([ADDED, record.id, record.method, record.args, record.kwargs, record.created_at])
        else:
            self._ops.append(put(record, record.state))
        return True

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        taken = self._memory.take_many(wants)
        held: Op = [HELD]
        for records in taken:
            held += map(_ID, records)
        if len(held) > 1:
            self._ops.append(held)
        return taken

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        claimed = self._memory.claim(task_ids)
        if claimed:
            self._ops.append([HELD, *map(_ID, claimed)])
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        task_ids = [task_id for task_id in task_ids if task_id in self._live]
        if task_ids:
            self._memory.requeue(task_ids)
            self._ops.append([REQUEUED, *task_ids])

    def retry(self, task_id: str, attempts: int) -> None:
        if task_id in self._live:
            self._memory.retry(task_id, attempts)
            self._ops.append([RETRIED, task_id, attempts])

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        memory = self._memory
        recorded = memory.finish_many(outcomes)  # (the memory store keeps them, until archived or expired)
        live, done = self._live, self._done
        ended: Op = [OUTCOMES, None]  # (the time they were recorded at, once known)
        for outcome in itertools.compress(outcomes, recorded):
            task_id = outcome.task_id
            del live[task_id]
            done[task_id] = None
            ended += (task_id, outcome.state, outcome.result, outcome.error)  # as the memory store keeps them
        if len(ended) > 2:
            # The memory store records one call's outcomes at one time: the first one's is every one's.
            first = memory.get(ended[2])
            assert first is not None
            ended[1] = first.finished_at
            self._ops.append(ended)
        return recorded

    def expire(self, before: float, limit: int = 10_000) -> int:
        self._begin()
        gone = self._archive.expire(before, limit)  # the oldest outcomes are there
        self._archived -= gone
        count = sum(gone.values())
        if count < limit:
            count += self._memory.expire(before, limit - count)
            self._forget_done()
        return count

    def _forget_done(self) -> None:
        """Forget the recent outcomes the memory store no longer holds: the first ones (it forgets the
        oldest first, as the journal must)."""
        done, memory = self._done, self._memory
        forgot: Op = [FORGOT]
        for task_id in done:
            if memory.get(task_id) is not None:
                break
            forgot.append(task_id)
        for task_id in forgot[1:]:
            del done[task_id]
        if len(forgot) > 1:
            self._ops.append(forgot)

    def due(self, now: float, limit: int = 10_000) -> int:
        count = self._memory.due(now, limit)
        if count:
            self._ops.append([DUE, now, count])
        return count

    def next_due(self) -> float | None:
        return self._memory.next_due()

    def get(self, task_id: str) -> TaskRecord | None:
        record = self._memory.get(task_id)
        return record if record is not None else self._archive.get(task_id)

    def state_counts(self) -> Mapping[str, int]:
        counts = Counter(self._memory.state_counts())
        counts.update(self._archived)
        return {state: count for state, count in counts.items() if count}

    def oldest_queued(self) -> Mapping[str, float]:
        return self._memory.oldest_queued()

    def queued_counts(self) -> Mapping[str, int]:
        return self._memory.queued_counts()

    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        limit = max(limit, 0)
        found = self._memory.list_tasks(state, method, limit, before)
        if state is None or state in FINAL_STATES:
            found += self._archive.list_tasks(state, method, limit, before)
        return heapq.nlargest(limit, found, key=_time)

    def reset(self, task_id: str) -> bool:
        if task_id in self._done:
            if not self._memory.reset(task_id):
                return False
            del self._done[task_id]
            record = self._memory.get(task_id)
        else:
            record = self._archive.get(task_id)
            if record is None or record.state not in (FAILED, REVOKED):
                return False
            state = record.state
            record.state, record.attempts, record.result, record.error = QUEUED, 0, None, None
            record.created_at, record.finished_at, record.due_at = time.time(), None, None
            self._memory.add(record)  # (QueueFull, if it is full: then nothing changed)
            self._begin()
            self._archive.remove(task_id)
            self._archived[state] -= 1
        assert record is not None
        self._live[task_id] = None
        self._ops.append(put(record))
        return True

    def recover(self) -> int:
        queued = self._memory.recover()
        self._begin()
        self._journal.rewrite(self._snapshot())  # nothing held, nothing retried; and the journal compacted
        self._ops = []
        self.flush()
        return queued

    def _snapshot(self) -> list[Op]:
        live = [self._memory.get(task_id) for task_id in self._live]
        done = [self._memory.get(task_id) for task_id in self._done]
        return snapshot((record for record in live if record is not None), (record for record in done if record is not None))

    def remember_methods(self, methods: Iterable[str]) -> None:
        self._registry.remember_methods(methods)

    def known_methods(self) -> Collection[str]:
        return self._registry.known_methods()

    def claim_slot(self, name: str, slot: float) -> bool:
        return self._registry.claim_slot(name, slot)

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        return self._registry.lock_unique(key, task_id, until)

    def flush(self) -> list[TaskRecord]:
        self._archive_old()
        if self._journal.ops + len(self._ops) > max(REWRITE_OVER, REWRITE_RATIO * (len(self._live) + len(self._done))):
            self._begin()
            self._journal.rewrite(self._snapshot())
            self._ops = []
        if self._ops:
            self._begin()
            self._journal.append(self._ops)
            self._ops = []
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False
        return []

    def _archive_old(self) -> None:
        """Move the oldest outcomes to the archive, if there are too many or they are old."""
        done, memory = self._done, self._memory
        if not done:
            return
        cutoff = time.time() - ARCHIVE_AFTER_S
        oldest = memory.get(next(iter(done)))
        if len(done) <= ARCHIVE_OVER and (oldest is None or (oldest.finished_at or 0.0) >= cutoff):
            return
        over = len(done) - ARCHIVE_OVER
        moved: list[TaskRecord] = []
        for task_id in done:
            record = memory.get(task_id)
            if record is None:
                continue
            if len(moved) >= ARCHIVE_BATCH or (len(moved) >= over and (record.finished_at or 0.0) >= cutoff):
                break
            moved.append(record)
        self._begin()
        self._archive.put(moved)
        self._archived.update(record.state for record in moved)
        memory.expire(math.inf, len(moved))  # those: the oldest outcomes it holds
        self._forget_done()

    def close(self) -> None:
        self.flush()
        self._db.close()


class _Clock:
    """The memory store's clock while the journal is read back."""

    now = 0.0

    def time(self) -> float:
        return self.now


_ID = operator.attrgetter("id")


def _time(record: TaskRecord) -> float:
    """A task's time for listing: when it ended, or else when it was queued."""
    return record.finished_at or record.created_at or 0.0


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, if it does not exist: it holds every task's
    arguments and results. (SQLite gives its -wal and -shm files the database file's permissions.)"""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
