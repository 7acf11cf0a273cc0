"""SqliteRegistry: the small tables beside an SQLite store's tasks, in the same file and transaction.

- ``methods``: the task names nodes announced, and when (:meth:`zerotask.store.Store.known_methods`);
- ``slots``: the latest slot of each periodic task that a broker took (:meth:`~zerotask.store.Store.claim_slot`);
- ``unique_locks``: which task holds each ``@task(unique_for=...)`` lock, until when
  (:meth:`~zerotask.store.Store.lock_unique`).

The broker is the file's only writer, so the names are also kept in memory, loaded at open.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from zerotask.store.base import MAX_REMEMBERED_METHODS, MAX_UNIQUE_LOCKS, METHODS_REMEMBERED_S

SCHEMA = """
CREATE TABLE IF NOT EXISTS methods (name TEXT PRIMARY KEY, announced_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS slots (name TEXT PRIMARY KEY, slot REAL NOT NULL, claimed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS unique_locks (key TEXT PRIMARY KEY, task_id TEXT NOT NULL, until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS unique_locks_by_time ON unique_locks (until);
"""
_PRUNE_EVERY = 1000  # locks given between two looks at how many are kept


class SqliteRegistry:
    """``begin`` opens the store's transaction (if it is not open): every write here joins it.
    ``unfinished(task_id)``: whether the store holds that task without an outcome (a lock's holder)."""

    def __init__(self, db: sqlite3.Connection, begin: Callable[[], None], unfinished: Callable[[str], bool]) -> None:
        self._db = db
        self._begin = begin
        self._unfinished = unfinished
        db.executescript(SCHEMA)
        # Task name -> when a node last announced it, oldest first.
        self._methods: dict[str, float] = dict(db.execute("SELECT name, announced_at FROM methods ORDER BY announced_at"))
        self._locks_given = 0

    def _write(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self._begin()
        return self._db.execute(sql, parameters)

    # ---- task names ------------------------------------------------------------------------------

    def remember_methods(self, methods: Iterable[str]) -> None:
        now = time.time()
        names = list(dict.fromkeys(methods))
        for name in names:
            self._methods.pop(name, None)  # to the end: ordered by when it was announced
            self._methods[name] = now
        if names:
            self._begin()
            self._db.executemany("INSERT OR REPLACE INTO methods VALUES (?, ?)", [(name, now) for name in names])
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Oldest first: the names not announced for METHODS_REMEMBERED_S, then any over the bound."""
        cutoff = now - METHODS_REMEMBERED_S
        forget = list(itertools.takewhile(lambda name: self._methods[name] < cutoff, self._methods))
        excess = len(self._methods) - len(forget) - MAX_REMEMBERED_METHODS
        if excess > 0:
            forget += itertools.islice(self._methods, len(forget), len(forget) + excess)
        for name in forget:
            del self._methods[name]
        if forget:
            self._begin()
            self._db.executemany("DELETE FROM methods WHERE name = ?", [(name,) for name in forget])

    def known_methods(self) -> Collection[str]:
        if self._methods and next(iter(self._methods.values())) < time.time() - METHODS_REMEMBERED_S:
            self._forget(time.time())
        return self._methods.keys()

    # ---- periodic slots --------------------------------------------------------------------------

    def claim_slot(self, name: str, slot: float) -> bool:
        row = self._db.execute("SELECT slot FROM slots WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] >= slot:
            return False
        self._write("INSERT OR REPLACE INTO slots VALUES (?, ?, ?)", (name, slot, time.time()))
        self._write(
            "DELETE FROM slots WHERE name IN (SELECT name FROM slots ORDER BY claimed_at DESC LIMIT -1 OFFSET ?)",
            (MAX_REMEMBERED_METHODS,),
        )
        return True

    # ---- unique locks ----------------------------------------------------------------------------

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        now = time.time()
        row = self._db.execute(
            "SELECT task_id FROM unique_locks WHERE key = ? AND task_id != ? AND until > ?", (key, task_id, now)
        ).fetchone()
        if row is not None and self._unfinished(row[0]):
            return str(row[0])
        self._write("INSERT OR REPLACE INTO unique_locks VALUES (?, ?, ?)", (key, task_id, until))
        # Expired locks go a few at a time; beyond the bound, the soonest to expire go first.
        self._write("DELETE FROM unique_locks WHERE key IN (SELECT key FROM unique_locks WHERE until <= ? LIMIT 8)", (now,))
        self._locks_given += 1
        if self._locks_given % _PRUNE_EVERY == 0:
            (count,) = self._db.execute("SELECT count(*) FROM unique_locks").fetchone()
            if count > MAX_UNIQUE_LOCKS:
                excess = count - MAX_UNIQUE_LOCKS
                self._write(
                    "DELETE FROM unique_locks WHERE key IN (SELECT key FROM unique_locks ORDER BY until LIMIT ?)", (excess,)
                )
        return None
