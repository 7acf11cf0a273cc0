"""SqliteStore: the durable embedded default. One file, WAL journal, one commit per flush.

``synchronous=NORMAL`` with WAL makes each commit survive the broker being killed (the data is in the
operating system once ``COMMIT`` returns) without an fsync per commit; pass ``synchronous="FULL"``
to survive power loss as well, at the cost of one fsync per flush.

Adds are deferred to the next statement or flush, and written together (the ids taken already are
handed back by flush, as the Store interface allows).

The broker is the file's only writer, so the counts (queued by method, tasks by state) are kept in
memory, loaded at open and updated by every write, instead of counted with a query every round.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import Outcome, Store, TaskRecord, Want, want_parts
from zerotask.store.sqlite_registry import SqliteRegistry
from zerotask.wire import ASSIGNED, FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, REVOKED, SCHEDULED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    params BLOB NOT NULL,
    state TEXT NOT NULL,
    outcome BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    owner TEXT,
    created_at REAL,
    queue TEXT NOT NULL DEFAULT 'default',
    priority INTEGER NOT NULL DEFAULT 0,
    due_at REAL
);
DROP INDEX IF EXISTS queued_by_method;
CREATE INDEX IF NOT EXISTS queued_in_line ON tasks (method, queue, priority DESC, seq) WHERE state = 'QUEUED';
CREATE INDEX IF NOT EXISTS scheduled_by_time ON tasks (due_at) WHERE state = 'SCHEDULED';
CREATE INDEX IF NOT EXISTS finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS failed_by_time ON tasks (finished_at) WHERE state = 'FAILED';
CREATE INDEX IF NOT EXISTS revoked_by_time ON tasks (finished_at) WHERE state = 'REVOKED';
"""
_NOT_FINAL = "state NOT IN ('FINISHED', 'FAILED', 'REVOKED')"
_CHUNK = 500  # ids per statement, well under SQLite's limit on bound variables
_COLUMNS = "id, method, params, state, outcome, attempts, owner, created_at, finished_at, queue, priority, due_at"
# Columns a file made by an earlier version lacks, added when it is opened.
_ADDED_COLUMNS = {
    "queue": "queue TEXT NOT NULL DEFAULT 'default'",
    "priority": "priority INTEGER NOT NULL DEFAULT 0",
    "due_at": "due_at REAL",
}


class SqliteStore(Store):
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        _create_private(path)
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Adds wait here, in order, until the next use of the connection: one executemany for a round's
        # tasks instead of an INSERT each (about half the store's time per task). The ids refused (taken
        # already) wait for flush to hand them back.
        self._pending: dict[str, tuple[TaskRecord, tuple[Any, ...]]] = {}
        self._refused: list[TaskRecord] = []
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the queue's index stays in memory
        present = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        if present:
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE tasks ADD COLUMN {definition}")
        self._db.executescript(_SCHEMA)
        self._in_transaction = False
        self._queued: Counter[str] = Counter(
            dict(self._db.execute("SELECT method, count(*) FROM tasks WHERE state = 'QUEUED' GROUP BY method").fetchall())
        )
        self._registry = SqliteRegistry(self._connection, self._begin)
        self._by_state: Counter[str] = Counter(  # QUEUED excepted: that is _queued's
            dict(self._db.execute("SELECT state, count(*) FROM tasks WHERE state != 'QUEUED' GROUP BY state").fetchall())
        )

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, once the adds waiting are written: every statement sees them."""
        if self._pending:
            self._insert_pending()
        return self._connection

    def _insert_pending(self) -> None:
        pending, self._pending = self._pending, {}
        ids = list(pending)
        taken: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            query = f"SELECT id FROM tasks WHERE id IN ({','.join('?' * len(chunk))})"
            taken.update(task_id for (task_id,) in self._connection.execute(query, chunk))
        for task_id in taken:
            record, row = pending.pop(task_id)
            self._move(record.method, row[3], None)  # counted (by its state then) when it was added
            self._refused.append(record)
        self._begin()
        self._connection.executemany(
            "INSERT OR IGNORE INTO tasks (id, method, params, state, attempts, owner, created_at, queue, priority, due_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row for _, row in pending.values()],
        )

    def _begin(self) -> None:
        if not self._in_transaction:
            self._connection.execute("BEGIN")
            self._in_transaction = True

    def _write(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self._begin()
        return self._db.execute(sql, parameters)

    def _count(self, method: str, change: int) -> None:
        self._queued[method] += change
        if self._queued[method] <= 0:
            del self._queued[method]

    def _move(self, method: str, old: str | None, new: str | None, count: int = 1) -> None:
        """``count`` tasks of ``method`` went from state ``old`` to ``new`` (None: not stored)."""
        for state, change in ((old, -count), (new, count)):
            if state == QUEUED:
                self._count(method, change)
            elif state is not None:
                self._by_state[state] += change
                if self._by_state[state] <= 0:
                    del self._by_state[state]

    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        if record.id in self._pending:
            return False
        params = jsonrpc.dumps([record.args, record.kwargs, record.options])
        now = time.time()
        created_at = now if record.created_at is None else record.created_at
        state = SCHEDULED if record.due_at is not None and record.due_at > now else QUEUED
        row = (record.id, record.method, params, state, record.attempts, record.owner, created_at)
        self._pending[record.id] = (record, (*row, record.queue, record.priority, record.due_at))
        record.state, record.created_at, record.finished_at = state, created_at, None
        self._move(record.method, None, state)
        return True

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        taken: list[list[TaskRecord]] = []
        assigned: list[tuple[int]] = []
        chosen: set[int] = set()  # a want's query cannot see that an earlier one took a row: skip it here
        for want in wants:
            methods, limit, queues = want_parts(want)
            rows: list[tuple[int, int, str, str, bytes, int, str | None, float | None, str]] = []
            if limit > 0:  # SQLite reads a negative LIMIT as "no limit"
                # A method or queue named twice would otherwise select its tasks twice.
                for method, queue in itertools.product(set(methods), set(queues)):
                    if self._queued.get(method):
                        rows.extend(
                            self._db.execute(
                                "SELECT -priority, seq, id, method, params, attempts, owner, created_at, queue FROM tasks"
                                " WHERE state = 'QUEUED' AND method = ? AND queue = ? ORDER BY priority DESC, seq LIMIT ?",
                                (method, queue, limit + len(chosen)),
                            )
                        )
            rows = sorted(row for row in rows if row[1] not in chosen)[:limit]
            records = []
            for negative_priority, seq, task_id, method, params, attempts, owner, created_at, queue in rows:
                chosen.add(seq)
                assigned.append((seq,))
                self._move(method, QUEUED, ASSIGNED)
                args, kwargs, options = jsonrpc.loads(params)
                record = TaskRecord(task_id, method, args, kwargs, ASSIGNED, attempts=attempts, options=options, owner=owner)
                record.created_at, record.queue, record.priority = created_at, queue, -negative_priority
                records.append(record)
            taken.append(records)
        if assigned:
            self._begin()
            self._db.executemany("UPDATE tasks SET state = 'ASSIGNED' WHERE seq = ?", assigned)
        return taken

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        claimed = []
        for task_id in task_ids:
            record = self.get(task_id)
            if record is None or record.state in FINAL_STATES or record.state == SCHEDULED:
                continue
            self._move(record.method, record.state, ASSIGNED)
            self._write("UPDATE tasks SET state = 'ASSIGNED' WHERE id = ?", (task_id,))
            record.state = ASSIGNED
            claimed.append(record)
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        task_ids = list(dict.fromkeys(task_ids))
        if not task_ids:
            return
        found = self._states(task_ids)
        for task_id in task_ids:
            if task_id in found and found[task_id][1] in (ASSIGNED, RETRY):
                method, old = found[task_id]
                self._write("UPDATE tasks SET state = 'QUEUED' WHERE id = ?", (task_id,))
                self._move(method, old, QUEUED)

    def retry(self, task_id: str, attempts: int) -> None:
        row = self._db.execute("SELECT method, state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row[1] in FINAL_STATES:
            return
        self._move(row[0], row[1], RETRY)
        self._write("UPDATE tasks SET state = ?, attempts = ? WHERE id = ?", (RETRY, attempts, task_id))

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        now = time.time()
        recorded = [False] * len(outcomes)
        writes: list[tuple[str, bytes, float, str, str]] = []
        seen: set[str] = set()
        unheld = [outcome.task_id for outcome in outcomes if not outcome.held]
        states = self._states(unheld) if unheld else {}
        for index, outcome in enumerate(outcomes):
            if outcome.task_id in seen:
                continue  # the first outcome in the batch wins, as it would in separate calls
            if outcome.held:
                # Held by a node until now: ASSIGNED in this file, so neither final nor queued. Its method is
                # not at hand (and not needed to count by state).
                self._move("", ASSIGNED, outcome.state)
            else:
                found = states.get(outcome.task_id)
                if found is None or found[1] in FINAL_STATES:
                    continue
                self._move(found[0], found[1], outcome.state)
            seen.add(outcome.task_id)
            value = {"error": outcome.error} if outcome.error is not None else {"result": outcome.result}
            writes.append((outcome.state, jsonrpc.dumps(value), now, outcome.state, outcome.task_id))
            recorded[index] = True
        if writes:
            self._begin()
            self._db.executemany(
                "UPDATE tasks SET state = ?, outcome = ?, finished_at = ?,"
                f" params = CASE WHEN ? = 'FINISHED' THEN x'' ELSE params END WHERE id = ? AND {_NOT_FINAL}",
                writes,
            )
        return recorded

    def _states(self, task_ids: list[str]) -> dict[str, tuple[str, str]]:
        """task id -> (method, state), for those of ``task_ids`` that exist."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for task_id, method, state in self._db.execute(f"SELECT id, method, state FROM tasks WHERE id IN ({marks})", chunk):
                found[task_id] = (method, state)
        return found

    def due(self, now: float, limit: int = 10_000) -> int:
        cursor = self._write(
            "UPDATE tasks SET state = 'QUEUED' WHERE seq IN"
            " (SELECT seq FROM tasks WHERE state = 'SCHEDULED' AND due_at <= ? ORDER BY due_at LIMIT ?) RETURNING method",
            (now, max(limit, 0)),
        )
        methods = [method for (method,) in cursor.fetchall()]
        for method in methods:
            self._move(method, SCHEDULED, QUEUED)
        return len(methods)

    def next_due(self) -> float | None:
        if not self._by_state.get(SCHEDULED):
            return None
        row = self._db.execute("SELECT min(due_at) FROM tasks WHERE state = 'SCHEDULED'").fetchone()
        return None if row is None else row[0]

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def state_counts(self) -> Mapping[str, int]:
        queued = sum(self._queued.values())
        return {QUEUED: queued, **self._by_state} if queued else dict(self._by_state)

    def oldest_queued(self) -> Mapping[str, float]:
        query = "SELECT created_at FROM tasks WHERE state = 'QUEUED' AND method = ? ORDER BY seq LIMIT 1"
        oldest = {}
        for method in self._queued:
            row = self._db.execute(query, (method,)).fetchone()
            if row is not None:
                oldest[method] = row[0] if row[0] is not None else time.time()
        return oldest

    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        # The time column each state is listed by, so that an index serves the common listings: failed
        # and revoked tasks by their own partial index, queued ones by queued_in_line.
        if state in (FAILED, REVOKED, FINISHED):
            at, order = "finished_at", "finished_at DESC"
        elif state is not None:
            at, order = "created_at", "seq DESC"
        else:
            at = "coalesce(finished_at, created_at)"
            order = f"{at} DESC, seq DESC"
        where, parameters = [], []
        for condition, value in (("state = ?", state), ("method = ?", method), (f"{at} < ?", before)):
            if value is not None:
                where.append(condition)
                parameters.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        query = f"SELECT {_COLUMNS} FROM tasks {clause} ORDER BY {order} LIMIT ?"
        return [_record(row) for row in self._db.execute(query, (*parameters, max(limit, 0)))]

    def reset(self, task_id: str) -> bool:
        row = self._db.execute("SELECT method, state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row[1] not in (FAILED, REVOKED):
            return False
        self._write(
            "UPDATE tasks SET seq = (SELECT max(seq) + 1 FROM tasks), state = 'QUEUED', outcome = NULL, attempts = 0,"
            " finished_at = NULL, due_at = NULL, created_at = ? WHERE id = ?",
            (time.time(), task_id),
        )
        self._move(row[0], row[1], QUEUED)
        return True

    def queued_counts(self) -> Mapping[str, int]:
        return self._queued

    def expire(self, before: float, limit: int = 10_000) -> int:
        cursor = self._write(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT ?)"
            " RETURNING state",
            (before, limit),
        )
        gone = Counter(state for (state,) in cursor.fetchall())
        for state, count in gone.items():
            self._move("", state, None, count)
        return sum(gone.values())

    def recover(self) -> int:
        requeued = self._write("UPDATE tasks SET state = 'QUEUED' WHERE state IN ('ASSIGNED', 'RETRY') RETURNING method")
        for (method,) in requeued.fetchall():
            self._count(method, 1)
        for state in (ASSIGNED, RETRY):
            self._by_state.pop(state, None)
        self.flush()
        return sum(self._queued.values())

    def remember_methods(self, methods: Iterable[str]) -> None:
        self._registry.remember_methods(methods)

    def known_methods(self) -> Collection[str]:
        return self._registry.known_methods()

    def claim_slot(self, name: str, slot: float) -> bool:
        return self._registry.claim_slot(name, slot)

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        if self._pending:  # the lock's holder may be a task added this round
            self._insert_pending()
        return self._registry.lock_unique(key, task_id, until)

    def flush(self) -> list[TaskRecord]:
        if self._pending:
            self._insert_pending()
        if self._in_transaction:
            self._connection.execute("COMMIT")
            self._in_transaction = False
        refused, self._refused = self._refused, []
        return refused

    def close(self) -> None:
        self.flush()
        self._connection.close()


def _record(row: tuple[Any, ...]) -> TaskRecord:
    """A task from a row of _COLUMNS."""
    task_id, method, params, state, outcome, attempts, owner, created_at, finished_at, queue, priority, due_at = row
    record = TaskRecord(task_id, method, state=state, attempts=attempts, owner=owner, queue=queue, priority=priority)
    record.created_at, record.finished_at, record.due_at = created_at, finished_at, due_at
    if params:
        record.args, record.kwargs, record.options = jsonrpc.loads(params)
    if outcome:
        decoded = jsonrpc.loads(outcome)
        record.result = decoded.get("result")
        record.error = decoded.get("error")
    return record


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, if it does not exist: it holds every task's
    arguments and results. (SQLite gives its -wal and -shm files the database file's permissions.)"""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
