"""SqliteStore: the durable embedded default. One file, WAL journal, one commit per flush.

``synchronous=NORMAL`` with WAL makes each commit survive the broker being killed (the data is in the
operating system once ``COMMIT`` returns) without an fsync per commit; pass ``synchronous="FULL"``
to survive power loss as well, at the cost of one fsync per flush.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterable
from typing import Any

from zerotask import jsonrpc
from zerotask.store import FINAL_STATES, QUEUED, Store, TaskRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    params BLOB NOT NULL,
    state TEXT NOT NULL,
    outcome BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS queued_by_method ON tasks (method, seq) WHERE state = 'QUEUED';
DROP INDEX IF EXISTS unfinished;
CREATE INDEX IF NOT EXISTS finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
"""


class SqliteStore(Store):
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the queue's index stays in memory
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        if columns and "finished_at" not in columns:  # a file from before results expired
            self._db.execute("ALTER TABLE tasks ADD COLUMN finished_at REAL")
        self._db.executescript(_SCHEMA)
        self._in_transaction = False
        self._finishing: list[tuple[str, bytes, float, str]] = []  # outcomes not yet written (see finish_unfinished)

    def _write(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True
        return self._db.execute(sql, parameters)

    def add(self, record: TaskRecord) -> bool:
        params = jsonrpc.dumps([record.args, record.kwargs, record.options])
        cursor = self._write(
            "INSERT OR IGNORE INTO tasks (id, method, params, state, attempts) VALUES (?, ?, ?, ?, ?)",
            (record.id, record.method, params, QUEUED, record.attempts),
        )
        if cursor.rowcount == 1:
            record.state = QUEUED
            return True
        return False

    def take(self, methods: Collection[str], limit: int) -> list[TaskRecord]:
        self._write_finishing()
        if limit <= 0:
            return []  # SQLite reads a negative LIMIT as "no limit", and rows[:limit] would then keep all but -limit
        rows: list[tuple[int, str, str, bytes, int]] = []
        for method in set(methods):  # a method named twice would otherwise select, and return, its tasks twice
            rows.extend(
                self._db.execute(
                    "SELECT seq, id, method, params, attempts FROM tasks"
                    " WHERE state = 'QUEUED' AND method = ? ORDER BY seq LIMIT ?",
                    (method, limit),
                )
            )
        if not rows:
            return []
        rows.sort()
        rows = rows[:limit]
        self._write_many("UPDATE tasks SET state = 'ASSIGNED' WHERE seq = ?", [(row[0],) for row in rows])
        taken = []
        for _, task_id, method, params, attempts in rows:
            args, kwargs, options = _call(params)
            taken.append(TaskRecord(task_id, method, args, kwargs, "ASSIGNED", attempts=attempts, options=options))
        return taken

    def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True
        self._db.executemany(sql, rows)

    def set_state(self, task_id: str, state: str, attempts: int | None = None) -> None:
        self._write_finishing()
        final = tuple(FINAL_STATES)
        if attempts is None:
            self._write("UPDATE tasks SET state = ? WHERE id = ? AND state NOT IN (?, ?, ?)", (state, task_id, *final))
        else:
            self._write(
                "UPDATE tasks SET state = ?, attempts = ? WHERE id = ? AND state NOT IN (?, ?, ?)",
                (state, attempts, task_id, *final),
            )

    def finish_unfinished(self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None) -> None:
        outcome = jsonrpc.dumps({"error": error} if error is not None else {"result": result})
        self._finishing.append((state, outcome, time.time(), task_id))

    def _write_finishing(self) -> None:
        """Write the batched outcomes: one executemany instead of a statement per task."""
        if self._finishing:
            finishing, self._finishing = self._finishing, []
            self._write_many(
                "UPDATE tasks SET state = ?, outcome = ?, finished_at = ?, params = x''"
                " WHERE id = ? AND state NOT IN ('FINISHED', 'FAILED', 'REVOKED')",
                finishing,
            )

    def finish(self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None) -> bool:
        self._write_finishing()
        outcome = jsonrpc.dumps({"error": error} if error is not None else {"result": result})
        cursor = self._write(
            "UPDATE tasks SET state = ?, outcome = ?, finished_at = ?, params = x'' WHERE id = ? AND state NOT IN (?, ?, ?)",
            (state, outcome, time.time(), task_id, *FINAL_STATES),
        )
        return cursor.rowcount == 1

    def get(self, task_id: str) -> TaskRecord | None:
        self._write_finishing()
        row = self._db.execute("SELECT method, params, state, outcome, attempts FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        method, params, state, outcome, attempts = row
        record = TaskRecord(task_id, method, state=state, attempts=attempts)
        if params:
            record.args, record.kwargs, record.options = _call(params)
        if outcome:
            decoded = jsonrpc.loads(outcome)
            record.result = decoded.get("result")
            record.error = decoded.get("error")
        return record

    def unfinished(self) -> Iterable[TaskRecord]:
        self._write_finishing()
        rows = self._db.execute(
            "SELECT id, method, state, attempts FROM tasks WHERE state NOT IN ('FINISHED', 'FAILED', 'REVOKED') ORDER BY seq"
        ).fetchall()
        return [TaskRecord(task_id, method, state=state, attempts=attempts) for task_id, method, state, attempts in rows]

    def queued_counts(self) -> dict[str, int]:
        self._write_finishing()
        rows = self._db.execute("SELECT method, count(*) FROM tasks WHERE state = 'QUEUED' GROUP BY method")
        return {method: count for method, count in rows}

    def expire(self, before: float, limit: int = 10_000) -> int:
        self._write_finishing()
        cursor = self._write(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT ?)",
            (before, limit),
        )
        return cursor.rowcount

    def requeue_unfinished(self) -> int:
        self._write_finishing()
        self._write("UPDATE tasks SET state = 'QUEUED' WHERE state IN ('ASSIGNED', 'RUNNING', 'RETRY')")
        self.flush()
        return sum(self.queued_counts().values())

    def flush(self) -> None:
        self._write_finishing()
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    def close(self) -> None:
        self.flush()
        self._db.close()


def _call(params: bytes) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``[args, kwargs, options]`` as stored (files from before options were added hold two items)."""
    args, kwargs, *rest = jsonrpc.loads(params)
    return args, kwargs, rest[0] if rest else {}
