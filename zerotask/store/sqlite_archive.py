"""SqliteArchive: the ``tasks`` table of an SQLite store, where outcomes go once they are no longer recent.

Only tasks with an outcome (FINISHED, FAILED, REVOKED) live here, one row each, found by id (get, a
duplicate id at add) and by time (listings, expiry). Unfinished tasks and recent outcomes are the
journal's (:mod:`zerotask.store.sqlite_journal`): a row here costs about 10 µs to write (its id index
is a B-tree insert at a random place), so outcomes come here in batches, long after the round that
recorded them.

A file made before the journal kept every task here, unfinished ones too: :meth:`take_unfinished` hands
them over (the store journals them in the same transaction).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import TaskRecord
from zerotask.wire import FINAL_STATES, FINISHED

SCHEMA = """
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
DROP INDEX IF EXISTS queued_in_line;
DROP INDEX IF EXISTS scheduled_by_time;
CREATE INDEX IF NOT EXISTS finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS failed_by_time ON tasks (finished_at) WHERE state = 'FAILED';
CREATE INDEX IF NOT EXISTS revoked_by_time ON tasks (finished_at) WHERE state = 'REVOKED';
"""
# Columns a file made by an earlier version lacks, added when it is opened.
_ADDED_COLUMNS = {
    "queue": "queue TEXT NOT NULL DEFAULT 'default'",
    "priority": "priority INTEGER NOT NULL DEFAULT 0",
    "due_at": "due_at REAL",
}
_COLUMNS = "id, method, params, state, outcome, attempts, owner, created_at, finished_at, queue, priority, due_at"
_FINAL = "('FINISHED', 'FAILED', 'REVOKED')"


class SqliteArchive:
    """The outcomes kept in the file's ``tasks`` table. Every write joins the caller's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if present:
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE tasks ADD COLUMN {definition}")
        db.executescript(SCHEMA)
        self.size = 0  # rows: while there are none, an add needs no look here for its id

    def take_unfinished(self) -> list[TaskRecord]:
        """Delete the unfinished tasks a file of the version before the journal kept here, and return
        them in the order they were queued (with their states: ASSIGNED and RETRY as they were)."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE state NOT IN {_FINAL} ORDER BY seq").fetchall()
        if rows:
            self._db.execute(f"DELETE FROM tasks WHERE state NOT IN {_FINAL}")
        return [_record(row) for row in rows]

    def counts(self) -> Counter[str]:
        """Rows by state (all final)."""
        counts = Counter(dict(self._db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()))
        self.size = sum(counts.values())
        return counts

    def put(self, records: Sequence[TaskRecord]) -> None:
        """Archive tasks that have an outcome. A FINISHED one keeps its result, not its arguments."""
        rows = []
        for record in records:
            params = b"" if record.state == FINISHED else jsonrpc.dumps([record.args, record.kwargs, record.options])
            value = {"error": record.error} if record.error is not None else {"result": record.result}
            rows.append(
                (
                    record.id,
                    record.method,
                    params,
                    record.state,
                    jsonrpc.dumps(value),
                    record.attempts,
                    record.owner,
                    record.created_at,
                    record.finished_at,
                    record.queue,
                    record.priority,
                    record.due_at,
                )
            )
        self._db.executemany(f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.size += len(rows)

    def get(self, task_id: str) -> TaskRecord | None:
        if not self.size:
            return None
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def remove(self, task_id: str) -> None:
        self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
        self.size -= 1

    def has(self, task_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is not None

    def expire(self, before: float, limit: int) -> Counter[str]:
        """Delete up to ``limit`` rows whose outcome was recorded before ``before``, oldest first; returns
        how many of each state."""
        if not self.size or limit <= 0:
            return Counter()
        cursor = self._db.execute(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT ?)"
            " RETURNING state",
            (before, limit),
        )
        gone = Counter(state for (state,) in cursor.fetchall())
        self.size -= sum(gone.values())
        return gone

    def list_tasks(self, state: str | None, method: str | None, limit: int, before: float | None) -> list[TaskRecord]:
        """Up to ``limit`` archived tasks, newest outcome first (as :meth:`Store.list_tasks`)."""
        if not self.size or limit <= 0 or (state is not None and state not in FINAL_STATES):
            return []
        # By finished_at, so that an index serves the common listings: failed and revoked tasks by their
        # own partial index, the rest by finished_by_time.
        where, parameters = ["finished_at IS NOT NULL"], []
        for condition, value in (("state = ?", state), ("method = ?", method), ("finished_at < ?", before)):
            if value is not None:
                where.append(condition)
                parameters.append(value)
        query = f"SELECT {_COLUMNS} FROM tasks WHERE {' AND '.join(where)} ORDER BY finished_at DESC, seq DESC LIMIT ?"
        return [_record(row) for row in self._db.execute(query, (*parameters, limit))]


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


__all__ = ["SqliteArchive"]
