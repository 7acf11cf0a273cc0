"""Store: where the broker keeps the queue and the outcomes (the interface is in :mod:`zerotask.store.base`).

:class:`MemoryStore` is volatile, fast, and the test stand-in; :class:`SqliteStore` is durable and the
default; :class:`~zerotask.store.redis.RedisStore` is shared by several brokers (it needs the ``redis``
extra, imported only when used). :func:`open_store` makes one from a command line's ``--store``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from zerotask.store.base import DEFAULT_QUEUES, NO_ENTRIES, Changes, Outcome, Store, StoreUnavailable, TaskRecord, Want
from zerotask.store.memory import MemoryStore
from zerotask.store.sqlite import SqliteStore

REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")


def open_store(spec: str) -> Store:
    """``memory`` for a MemoryStore; ``redis://host:port/db``, ``rediss://...`` (TLS),
    ``redis+sentinel://host:port,host:port/MASTER/db`` or ``redis+cluster://host:port,host:port`` (a Redis
    Cluster) for a RedisStore; anything else is the path of an SQLite database file. A Redis spec may end in
    ``?store=NAME`` (default ``default``): the store's name, its keys' hash tag, so that brokers given other
    names keep other sets of tasks (on a Cluster, on the master of that name's slot). Raises ImportError,
    saying what to install, for a Redis spec without the ``redis`` extra."""
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(REDIS_SCHEMES):
        from zerotask.store.redis import RedisStore  # only now: the package imports without redis-py

        parts = urlsplit(spec)
        query = parse_qsl(parts.query, keep_blank_values=True)
        names = [value for key, value in query if key == "store"]
        rest = urlencode([(key, value) for key, value in query if key != "store"])
        return RedisStore(urlunsplit(parts._replace(query=rest)), queue=names[-1] if names else "default")
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
