"""SqliteStore: the durable embedded default. One file, WAL journal, one commit per flush.

``synchronous=NORMAL`` with WAL makes each commit survive the broker being killed (the data is in the
operating system once ``COMMIT`` returns) without an fsync per commit; pass ``synchronous="FULL"``
to survive power loss as well, at the cost of one fsync per flush.

The broker is the file's only writer, so the queued counts are kept in memory, loaded at open and
updated by every write, instead of counted with a query every round.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import Outcome, Store, TaskRecord, Want
from zerotask.wire import ASSIGNED, FINAL_STATES, QUEUED, RETRY

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
    owner TEXT
);
CREATE INDEX IF NOT EXISTS queued_by_method ON tasks (method, seq) WHERE state = 'QUEUED';
CREATE INDEX IF NOT EXISTS finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
"""
_NOT_FINAL = "state NOT IN ('FINISHED', 'FAILED', 'REVOKED')"
_CHUNK = 500  # ids per statement, well under SQLite's limit on bound variables


class SqliteStore(Store):
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        _create_private(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the queue's index stays in memory
        self._db.executescript(_SCHEMA)
        self._in_transaction = False
        self._queued: Counter[str] = Counter(
            dict(self._db.execute("SELECT method, count(*) FROM tasks WHERE state = 'QUEUED' GROUP BY method").fetchall())
        )

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _write(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self._begin()
        return self._db.execute(sql, parameters)

    def _count(self, method: str, change: int) -> None:
        self._queued[method] += change
        if self._queued[method] <= 0:
            del self._queued[method]

    def add(self, record: TaskRecord) -> bool:
        params = jsonrpc.dumps([record.args, record.kwargs, record.options])
        cursor = self._write(
            "INSERT OR IGNORE INTO tasks (id, method, params, state, attempts, owner) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.method, params, QUEUED, record.attempts, record.owner),
        )
        if cursor.rowcount != 1:
            return False
        record.state = QUEUED
        self._count(record.method, 1)
        return True

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        taken: list[list[TaskRecord]] = []
        assigned: list[tuple[int]] = []
        chosen: set[int] = set()  # a want's query cannot see that an earlier one took a row: skip it here
        for methods, limit in wants:
            rows: list[tuple[int, str, str, bytes, int, str | None]] = []
            if limit > 0:  # SQLite reads a negative LIMIT as "no limit"
                for method in set(methods):  # a method named twice would otherwise select its tasks twice
                    if self._queued.get(method):
                        rows.extend(
                            self._db.execute(
                                "SELECT seq, id, method, params, attempts, owner FROM tasks"
                                " WHERE state = 'QUEUED' AND method = ? ORDER BY seq LIMIT ?",
                                (method, limit + len(chosen)),
                            )
                        )
            rows = sorted(row for row in rows if row[0] not in chosen)[:limit]
            records = []
            for seq, task_id, method, params, attempts, owner in rows:
                chosen.add(seq)
                assigned.append((seq,))
                self._count(method, -1)
                args, kwargs, options = jsonrpc.loads(params)
                record = TaskRecord(task_id, method, args, kwargs, ASSIGNED, attempts=attempts, options=options, owner=owner)
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
            if record is None or record.state in FINAL_STATES:
                continue
            if record.state == QUEUED:
                self._count(record.method, -1)
            self._write("UPDATE tasks SET state = 'ASSIGNED' WHERE id = ?", (task_id,))
            record.state = ASSIGNED
            claimed.append(record)
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            rows = self._write(
                "UPDATE tasks SET state = 'QUEUED' WHERE id = ? AND state IN ('ASSIGNED', 'RETRY') RETURNING method", (task_id,)
            ).fetchall()
            for (method,) in rows:
                self._count(method, 1)

    def retry(self, task_id: str, attempts: int) -> None:
        row = self._db.execute("SELECT method, state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row[1] in FINAL_STATES:
            return
        if row[1] == QUEUED:
            self._count(row[0], -1)
        self._write("UPDATE tasks SET state = ?, attempts = ? WHERE id = ?", (RETRY, attempts, task_id))

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        now = time.time()
        recorded = [False] * len(outcomes)
        writes: list[tuple[str, bytes, float, str]] = []
        seen: set[str] = set()
        unheld = [outcome.task_id for outcome in outcomes if not outcome.held]
        states = self._states(unheld) if unheld else {}
        for index, outcome in enumerate(outcomes):
            if outcome.task_id in seen:
                continue  # the first outcome in the batch wins, as it would in separate calls
            if outcome.held:
                pass  # held by a node until now: ASSIGNED in this file, so neither final nor queued
            else:
                found = states.get(outcome.task_id)
                if found is None or found[1] in FINAL_STATES:
                    continue
                if found[1] == QUEUED:
                    self._count(found[0], -1)
            seen.add(outcome.task_id)
            value = {"error": outcome.error} if outcome.error is not None else {"result": outcome.result}
            writes.append((outcome.state, jsonrpc.dumps(value), now, outcome.task_id))
            recorded[index] = True
        if writes:
            self._begin()
            self._db.executemany(
                f"UPDATE tasks SET state = ?, outcome = ?, finished_at = ?, params = x'' WHERE id = ? AND {_NOT_FINAL}", writes
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

    def get(self, task_id: str) -> TaskRecord | None:
        query = "SELECT method, params, state, outcome, attempts, owner FROM tasks WHERE id = ?"
        row = self._db.execute(query, (task_id,)).fetchone()
        if row is None:
            return None
        method, params, state, outcome, attempts, owner = row
        record = TaskRecord(task_id, method, state=state, attempts=attempts, owner=owner)
        if params:
            record.args, record.kwargs, record.options = jsonrpc.loads(params)
        if outcome:
            decoded = jsonrpc.loads(outcome)
            record.result = decoded.get("result")
            record.error = decoded.get("error")
        return record

    def queued_counts(self) -> Mapping[str, int]:
        return self._queued

    def expire(self, before: float, limit: int = 10_000) -> int:
        cursor = self._write(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT ?)",
            (before, limit),
        )
        return cursor.rowcount

    def recover(self) -> int:
        requeued = self._write("UPDATE tasks SET state = 'QUEUED' WHERE state IN ('ASSIGNED', 'RETRY') RETURNING method")
        for (method,) in requeued.fetchall():
            self._count(method, 1)
        self.flush()
        return sum(self._queued.values())

    def flush(self) -> None:
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    def close(self) -> None:
        self.flush()
        self._db.close()


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, if it does not exist: it holds every task's
    arguments and results. (SQLite gives its -wal and -shm files the database file's permissions.)"""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
