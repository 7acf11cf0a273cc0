"""Store: where the broker keeps the queue and the outcomes (the interface is in :mod:`zerotask.store.base`).

:class:`MemoryStore` is volatile, fast, and the test stand-in; :class:`SqliteStore` is durable and the
default. :func:`open_store` makes one from a command line's ``--store``.
"""

from __future__ import annotations

from zerotask.store.base import DEFAULT_QUEUES, Changes, Outcome, Store, StoreUnavailable, TaskRecord, Want
from zerotask.store.memory import MemoryStore
from zerotask.store.sqlite import SqliteStore


def open_store(spec: str) -> Store:
    """``memory`` for a MemoryStore, anything else is the path of an SQLite database file."""
    if spec == "memory":
        return MemoryStore()
    return SqliteStore(spec)


__all__ = [
    "DEFAULT_QUEUES",
    "Changes",
    "MemoryStore",
    "Outcome",
    "StoreUnavailable",
    "SqliteStore",
    "Store",
    "TaskRecord",
    "Want",
    "open_store",
]
