"""Store: where the broker keeps the queue and the outcomes (the interface is in :mod:`zerotask.store.base`).

:class:`MemoryStore` is volatile, fast, and the test stand-in; :class:`SqliteStore` is durable and the
default; :class:`~zerotask.store.redis.RedisStore` is shared by several brokers (it needs the ``redis``
extra, imported only when used). :func:`open_store` makes one from a command line's ``--store``.
"""

from __future__ import annotations

from zerotask.store.base import DEFAULT_QUEUES, NO_ENTRIES, Changes, Outcome, Store, StoreUnavailable, TaskRecord, Want
from zerotask.store.memory import MemoryStore
from zerotask.store.sqlite import SqliteStore

REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://")


def open_store(spec: str) -> Store:
    """``memory`` for a MemoryStore; ``redis://host:port/db``, ``rediss://...`` (TLS) or
    ``redis+sentinel://host:port,host:port/MASTER/db`` for a RedisStore (queue "default"); anything
    else is the path of an SQLite database file. Raises ImportError, saying what to install, for a Redis
    spec without the ``redis`` extra."""
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(REDIS_SCHEMES):
        from zerotask.store.redis import RedisStore  # only now: the package imports without redis-py

        return RedisStore(spec)
    return SqliteStore(spec)


__all__ = [
    "NO_ENTRIES",
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
