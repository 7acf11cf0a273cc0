"""SqliteJournal: the ``journal`` table of an SQLite store, what makes its unfinished tasks and recent
outcomes durable.

Each flush appends one row: the round's changes as one JSON array of *ops*, written with one INSERT
and one COMMIT whatever the number of tasks. A row per task cost 8 to 10 µs to insert (its id index is
a B-tree insert at a random place) and two more to update it (taken, then ended): three times what the
broker spends on a task otherwise. Reading is done from memory; the file is read back, op by op, only
when a store opens it (:meth:`SqliteJournal.replay`).

The ops (each a JSON array, its first element the kind):

- ``[PUT, id, method, args, kwargs, options, queue, priority, due_at, owner, created_at, attempts, state]``:
  a task queued (added, or reset) at the back, QUEUED or SCHEDULED, or added ASSIGNED (held at once);
- ``[ADDED, id, method, args, kwargs, created_at]``: a PUT of a task added with the defaults (no options,
  the default queue, priority 0, not due later, no owner, no attempts: QUEUED), most tasks, in half the
  bytes;
- ``[HELD, id, ...]``: these tasks are ASSIGNED (taken or claimed);
- ``[REQUEUED, id, ...]``: those of these that were ASSIGNED or RETRY are back in line, QUEUED;
- ``[DUE, now, limit]``: up to ``limit`` SCHEDULED tasks whose due_at is ``now`` or earlier are QUEUED,
  the earliest first (then the first queued), as :meth:`zerotask.store.Store.due` did;
- ``[RETRIED, id, attempts]``: RETRY, with this many attempts;
- ``[ENDED, id, state, result, error, finished_at]``: its outcome;
- ``[OUTCOMES, finished_at, id, state, result, error, id, state, result, error, ...]``: outcomes recorded
  at one time, as ENDED ops (what the store writes: files of earlier versions hold ENDED ops);
- ``[FORGOT, id, ...]``: no longer the journal's (expired, or archived in the same transaction).

An op about a task the journal does not hold (or holds with an outcome already, for all but PUT and
FORGOT) changes nothing, as the store's own call did. The journal only grows; once it holds many more
ops than tasks, the store rewrites it as one snapshot of what it holds (:meth:`SqliteJournal.rewrite`),
so that its size, and the time to open the file, stay proportional to the tasks held.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import NO_ENTRIES, TaskRecord
from zerotask.wire import ASSIGNED, DEFAULT_QUEUE, FINISHED, QUEUED, RETRY, SCHEDULED

SCHEMA = "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);"
PUT, HELD, REQUEUED, RETRIED, ENDED, FORGOT, DUE, OUTCOMES, ADDED = range(9)
_ROWS_PER_SNAPSHOT_ENTRY = 10_000  # tasks per row of a snapshot: no row holds hundreds of megabytes

Op = list[Any]


def put(record: TaskRecord, state: str | None = None) -> Op:
    """The PUT op of a task, in ``state`` (by default QUEUED, or SCHEDULED if it is)."""
    return [
        PUT,
        record.id,
        record.method,
        record.args,
        record.kwargs,
        record.options,
        record.queue,
        record.priority,
        record.due_at,
        record.owner,
        record.created_at,
        record.attempts,
        state or (SCHEDULED if record.state == SCHEDULED else QUEUED),
    ]


def ended(record: TaskRecord) -> Op:
    return [ENDED, record.id, record.state, record.result, record.error, record.finished_at]


def snapshot(live: Iterable[TaskRecord], done: Iterable[TaskRecord]) -> list[Op]:
    """The ops that bring an empty journal to these tasks: ``live`` ones (unfinished) in their order in
    line, ``done`` ones (with an outcome) in the order they ended."""
    ops: list[Op] = []
    held: Op = [HELD]
    for record in live:
        ops.append(put(record))
        if record.state == ASSIGNED:
            held.append(record.id)
        elif record.state == RETRY:
            ops.append([RETRIED, record.id, record.attempts])
    if len(held) > 1:
        ops.append(held)
    for record in done:
        ops.append(put(record))
        ops.append(ended(record))
    return ops


class SqliteJournal:
    """The journal table. Every write joins the caller's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)
        self.ops = 0  # ops in the table: the store rewrites it once they far outnumber the tasks held

    def append(self, ops: Sequence[Op]) -> None:
        self._db.execute("INSERT INTO journal (entry) VALUES (?)", (jsonrpc.dumps(ops),))
        self.ops += len(ops)

    def rewrite(self, ops: Sequence[Op]) -> None:
        """Replace everything with ``ops`` (a :func:`snapshot`)."""
        self._db.execute("DELETE FROM journal")
        for start in range(0, len(ops), _ROWS_PER_SNAPSHOT_ENTRY):
            self._db.execute(
                "INSERT INTO journal (entry) VALUES (?)", (jsonrpc.dumps(ops[start : start + _ROWS_PER_SNAPSHOT_ENTRY]),)
            )
        self.ops = len(ops)

    def replay(self, first: Sequence[Op] = ()) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """What the journal holds, after ``first``: the unfinished tasks in their order in line (each in
        the state the journal left it: QUEUED, SCHEDULED, ASSIGNED or RETRY), and the tasks with an
        outcome, in the order they ended."""
        # id -> [its PUT op, state, attempts, its outcome (state, result, error, finished_at) or None, when it
        # ended, when it was put]
        tasks: dict[str, list[Any]] = {}
        scheduled: dict[str, None] = {}  # the ids of SCHEDULED tasks
        self.ops = ends = puts = 0
        entries = (jsonrpc.loads(entry) for (entry,) in self._db.execute("SELECT entry FROM journal ORDER BY seq"))
        for ops in (first, *entries):
            self.ops += len(ops)
            for op in ops:
                kind = op[0]
                if kind == ADDED:
                    _, task_id, method, args, kwargs, created_at = op
                    op = [PUT, task_id, method, args, kwargs, None, DEFAULT_QUEUE, 0, None, None, created_at, 0, QUEUED]
                    kind = PUT
                if kind == PUT:
                    tasks.pop(op[1], None)  # a reset: to the back
                    puts += 1
                    tasks[op[1]] = [op, op[12], op[11], None, 0, puts]
                    if op[12] == SCHEDULED:
                        scheduled[op[1]] = None
                    continue
                if kind == OUTCOMES:
                    finished_at = op[1]
                    for at in range(2, len(op), 4):
                        task = tasks.get(op[at])
                        if task is not None and task[3] is None:
                            scheduled.pop(op[at], None)
                            ends += 1
                            task[3], task[4] = (op[at + 1], op[at + 2], op[at + 3], finished_at), ends
                    continue
                if kind == DUE:
                    _, now, limit = op
                    due = [tasks[task_id] for task_id in scheduled if tasks[task_id][0][8] <= now]
                    for entry in sorted(due, key=lambda entry: (entry[0][8], entry[5]))[:limit]:
                        entry[1] = QUEUED
                        del scheduled[entry[0][1]]
                    continue
                for task_id in op[1:2] if kind in (RETRIED, ENDED) else op[1:]:
                    task = tasks.get(task_id)
                    if kind == FORGOT and task is not None:
                        del tasks[task_id]
                        scheduled.pop(task_id, None)
                    if task is None or task[3] is not None or kind == FORGOT:
                        continue  # unknown, or ended: the store's call changed nothing either
                    scheduled.pop(task_id, None)
                    if kind == ENDED:
                        ends += 1
                        task[3], task[4] = op[2:6], ends
                    elif kind == RETRIED:
                        task[1], task[2] = RETRY, op[2]
                    elif kind == HELD:
                        task[1] = ASSIGNED
                    elif task[1] in (ASSIGNED, RETRY):  # REQUEUED
                        task[1] = QUEUED
                    elif task[1] == SCHEDULED:
                        scheduled[task_id] = None  # (requeue leaves a scheduled task alone)
        live, done = [], []
        for op, state, attempts, end, _, _ in sorted(tasks.values(), key=lambda task: task[4]):
            _, task_id, method, args, kwargs, options, queue, priority, due_at, owner, created_at, _, _ = op
            record = TaskRecord(
                task_id, method, args, kwargs or NO_ENTRIES, state, attempts=attempts, options=options or NO_ENTRIES
            )
            record.queue, record.priority, record.due_at, record.owner, record.created_at = (
                queue,
                priority,
                due_at,
                owner,
                created_at,
            )
            if end is None:
                live.append(record)
                continue
            record.state, record.result, record.error, record.finished_at = end
            if record.state == FINISHED:
                record.args, record.kwargs = [], NO_ENTRIES
            done.append(record)
        return live, done


__all__ = [
    "ADDED",
    "DUE",
    "ENDED",
    "FORGOT",
    "HELD",
    "OUTCOMES",
    "PUT",
    "REQUEUED",
    "RETRIED",
    "SqliteJournal",
    "put",
    "snapshot",
]
