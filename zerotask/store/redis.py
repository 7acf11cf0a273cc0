"""RedisStore: the queue and outcomes in Redis, shared by several brokers (``shared = True``).

Every operation is one atomic Lua script (:mod:`zerotask.store.redis_scripts`, and
:mod:`zerotask.store.redis_registry` for periodic slots, unique locks and token buckets), so several
brokers may call any of them at once. :meth:`add` is deferred: the tasks are written together at the
next :meth:`flush`, or first thing in the same round trip as any other call (so every read sees them),
and :meth:`flush` returns the ones refused because their id existed. The queued counts come back with
every write, so :meth:`queued_counts` costs nothing.

Redis Cluster: every key of a store is under one hash tag, its constructor's ``queue``
(``<prefix>:{<queue>}:...``), so that a script touches one slot, which
:class:`~zerotask.store.redis_client.Route` finds and follows. The tasks' named queues live inside that
tag (see :mod:`zerotask.store.redis_layout`): to spread load over a Cluster, run stores (and their
brokers) with other ``queue`` (or ``prefix``) names (``--store redis+cluster://...?store=NAME``).

Durability is Redis': run it with ``appendonly yes`` (``appendfsync everysec`` loses nothing that was
acknowledged when Redis is killed, up to a second on power loss). The store bounds nothing but its own
write buffer: give Redis a ``maxmemory`` (with ``maxmemory-policy noeviction``), and a full Redis makes
calls raise StoreUnavailable until expire makes room.

While Redis cannot be reached every call raises :class:`StoreUnavailable` within about
``socket_timeout_s``, and service resumes by itself when Redis is back: adds that were not written stay
buffered for the next flush. A call that timed out may still run once Redis wakes up; the scripts
recognise a batch of adds sent again, and the next take_many queues again what a lost one took.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from zerotask import jsonrpc
from zerotask.store.base import (
    MAX_REMEMBERED_METHODS,
    METHODS_REMEMBERED_S,
    Changes,
    Outcome,
    Store,
    StoreUnavailable,
    TaskRecord,
    Want,
)
from zerotask.store.redis_calls import RedisCalls
from zerotask.store.redis_client import SOCKET_TIMEOUT_S, Redis
from zerotask.store.redis_flow import finish_args, recorded_flags, take_args, taken_tasks
from zerotask.store.redis_layout import held_key, pairs, score, task_from_row
from zerotask.store.redis_notify import Notifications
from zerotask.store.redis_registry import RedisRegistry
from zerotask.wire import QUEUED

DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024  # adds not yet written (Redis down): beyond, add raises QueueFull
KNOWN_METHODS_CACHED_S = 1.0  # known_methods asks Redis at most this often
RECLAIM_LIMIT = 1_000  # tasks one reclaim queues again at most: a script never blocks Redis for long
EXPIRE_SLICE = 2_000  # tasks one expire script forgets at most


class RedisStore(RedisCalls, Store):
    shared = True
    pipelined = True

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        prefix: str = "zt",
        queue: str = "default",
        *,
        client: Redis | None = None,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        """``url``: see :func:`zerotask.store.redis_client.connect` (unused when ``client`` is given; the
        caller then closes it). Several queues (or deployments) share one Redis under other ``prefix``
        or ``queue`` names."""
        super().__init__(url, prefix, queue, client, socket_timeout_s, max_buffered_bytes)
        self._lease_ms = 0
        self._notifications: Notifications | None = None
        self._known: tuple[float, frozenset[str]] | None = None  # (time.monotonic(), names)
        self._takes_in_doubt: deque[str] = deque(maxlen=64)  # take_many calls that raised: they may have run
        self._registry = RedisRegistry(self._base, self._read)
        self._closed = False
        try:
            self._counted(self._run([("HGETALL", self._key("queued"))])[0])
        except StoreUnavailable:
            pass  # Redis is down: the counts come with the first call that works

    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        """Buffers the task; always True (the next :meth:`flush` returns it if its id existed). Raises
        QueueFull when the buffer holds ``max_buffered_bytes`` (Redis has been unreachable a while)."""
        if self._buffer.add(record):
            self._counts.buffered(record.method)
        return True

    def flush(self) -> list[TaskRecord]:
        if self._buffer:
            self._run([])
        refused, self._refused = self._refused, []
        return refused

    # ---- the queue -----------------------------------------------------------------------------------

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        return self.take_later(wants)()[1] if wants else []

    def take_later(
        self, wants: Sequence[Want], outcomes: Sequence[Outcome] = ()
    ) -> Callable[[], tuple[list[bool], list[list[TaskRecord]]]]:
        """The buffered adds, the outcomes and the take in one write; the replies are read when asked."""
        commands = [self._script("finish", *finish_args(outcomes))] if outcomes else []
        token = uuid.uuid4().hex
        if wants:
            commands.append(self._script("take", *take_args(token, self._takes_in_doubt, wants)))
        replies = self._send(commands)

        def answer() -> tuple[list[bool], list[list[TaskRecord]]]:
            try:
                answers = iter(replies())
            except StoreUnavailable:
                if wants:
                    self._takes_in_doubt.append(token)  # it may have run: the next take queues again what it took
                raise
            recorded: list[bool] = []
            taken: list[list[TaskRecord]] = []
            if outcomes:
                flags, queued = next(answers)
                recorded = recorded_flags(flags)
                self._counted(queued)
            if wants:
                rows, queued = next(answers)
                self._takes_in_doubt.clear()
                taken = [taken_tasks(flat) for flat in rows]
                self._counted(queued)
            return recorded, taken

        return answer

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        task_ids = list(task_ids)
        return [task_from_row(row) for row in self._call("claim", *task_ids)] if task_ids else []

    def requeue(self, task_ids: Iterable[str]) -> None:
        """Once attached, puts back only the tasks leased to this broker: a node that moved to another
        broker had its tasks claimed there, and this broker losing it later must not take them back."""
        task_ids = list(task_ids)
        if task_ids:
            self._call("requeue", *task_ids)

    def retry(self, task_id: str, attempts: int) -> None:
        self._call("retry", task_id, attempts)

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return recorded_flags(self._call("finish", *finish_args(outcomes)))

    def expire(self, before: float, limit: int = 10_000) -> int:
        forgotten = 0
        while forgotten < limit:
            size = min(EXPIRE_SLICE, limit - forgotten)
            done: int = self._call("expire", score(before), size)
            forgotten += done
            if done < size:
                break
        return forgotten

    def reset(self, task_id: str) -> bool:
        return bool(self._call("reset", task_id))

    # ---- scheduled tasks, periodic slots, unique locks, rate limits ----------------------------------

    def due(self, now: float, limit: int = 10_000) -> int:
        """Atomic: brokers that call it at once queue each task once."""
        queued: int = self._call("due", score(now), limit)
        return queued

    def next_due(self) -> float | None:
        """One round trip (any broker may have scheduled the earliest task)."""
        first = self._read("next_due")
        return None if first is None else float(first)

    def claim_slot(self, name: str, slot: float) -> bool:
        return self._registry.claim_slot(name, slot)

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        return self._registry.lock_unique(key, task_id, until)

    def take_tokens(self, name: str, per_s: float, burst: float, count: int) -> int:
        """A token bucket in Redis, shared by the brokers (one round trip)."""
        return self._registry.take_tokens(name, per_s, burst, count)

    # ---- reads ---------------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        (row,) = self._read("get", task_id)
        return None if row is None else task_from_row(row)

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """One round trip: a script per 1,000 ids, pipelined."""
        chunks = [task_ids[start : start + 1000] for start in range(0, len(task_ids), 1000)]
        answers = self._run([self._script("get", *chunk) for chunk in chunks]) if chunks else []
        return [None if row is None else task_from_row(row) for rows in answers for row in rows]

    def queued_counts(self) -> Mapping[str, int]:
        """From memory, and live: the counts every write of this store brought back (other brokers'
        writes show at this store's next write or :meth:`changes`), with the adds not yet written (not
        the SCHEDULED ones). So the broker takes a task in the round it was added (the take carries the
        add), and stops taking once the counts say nothing is left."""
        return self._counts

    def state_counts(self) -> Mapping[str, int]:
        """Asks Redis (one round trip): other brokers change the counts too."""
        queued, states = self._run([("HGETALL", self._key("queued")), ("HGETALL", self._key("states"))])
        self._counted(queued)
        counts = {key.decode(): int(value) for key, value in pairs(states)}
        total = sum(self._queued.values())
        return {QUEUED: total, **counts} if total else counts

    def oldest_queued(self) -> Mapping[str, float]:
        methods = list(dict.fromkeys(itertools.chain(self._queued, self._buffer.counts)))
        if not methods:
            return {}
        created = self._read("oldest", *methods)
        return {method: float(at) for method, at in zip(methods, created, strict=True) if at is not None}

    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        """Newest first. QUEUED and held tasks are found where they wait (no index costs each task a
        write for listings): the latest of each method, named queue and priority, and every held task.
        A filter that matches few looks at 100,000 tasks of each kind at most (SCHEDULED, held, each
        method's named queue and priority, each final state), so that a listing never blocks Redis for
        long."""
        bound = "+inf" if before is None else score(before)
        brokers = self._brokers()
        held = [held_key(self._base, broker) for broker in brokers]
        rows = self._read("list", state or "", method or "", max(limit, 0), bound, *brokers, keys=held)
        return [task_from_row(row) for row in rows]

    # ---- several brokers -----------------------------------------------------------------------------

    def attach(self, broker_id: str, lease_s: float) -> None:
        """Also subscribes to what the other brokers do (see :meth:`fileno`). ``broker_id`` holds no "|"."""
        if not broker_id or "|" in broker_id:
            raise ValueError(f"a broker id is non-empty and holds no '|': {broker_id!r}")
        self._me, self._lease_ms = broker_id, max(1, round(lease_s * 1000))
        self._keys[-1] = held_key(self._base, broker_id)
        self.heartbeat()
        self._notifications = Notifications(self._route, (self._channel + broker_id).encode(), broker_id)

    def heartbeat(self) -> None:
        """Renews the lease (and reconnects to the other brokers' notifications, if that was lost)."""
        if not self._me:
            return
        brokers_key = self._key("brokers")
        _, joined = self._run([("SET", self._broker_key(self._me), b"1", "PX", self._lease_ms), ("SADD", brokers_key, self._me)])
        if joined and self._notifications is not None:
            # Another broker found this one's lease run out and forgot it: until now, no one told it
            # anything. It tells itself so (see Notifications), and looks up what it waits for.
            self._run([("PUBLISH", self._channel + self._me, jsonrpc.dumps(["L", self._me, []]))])
        if self._notifications is not None and self._notifications.fileno() is None:
            self._notifications.poll()

    def reclaim(self) -> int:
        return self._reclaim(mine=False)[0]

    def _reclaim(self, mine: bool) -> tuple[int, int]:
        """``mine``: this broker's own tasks too. Returns how many tasks were queued again, and how many ids
        were looked at (each leaves its broker's set: queued, or held there no more)."""
        candidates = self._brokers()
        keys = [self._broker_key(broker) for broker in candidates] + [held_key(self._base, broker) for broker in candidates]
        queued, looked = self._call("reclaim", RECLAIM_LIMIT, "1" if mine else "0", *candidates, keys=keys)
        return int(queued), int(looked)

    def _brokers(self) -> list[str]:
        """The ids of the brokers that may hold tasks: those that attached, this one, and "" (none)."""
        (brokers,) = self._run([("SMEMBERS", self._key("brokers"))])
        return sorted({"", self._me, *(broker.decode() for broker in brokers)})

    def recover(self) -> int:
        """Queues again the tasks of brokers whose lease ran out, and this broker's own from before it
        started (a broker restarted under the same id), never a live broker's (all of them for a store
        that never attached). Returns how many tasks are queued."""
        # Until every set it may take from is empty: a call that queued nothing may have looked only at
        # ids another broker finished, with tasks still held behind them.
        while self._reclaim(mine=True)[1]:
            pass
        return sum(self._queued.values())

    def fileno(self) -> int | None:
        """Readable when another broker published (call :meth:`changes`). It may change, or be None
        while Redis is unreachable: read it again after every :meth:`changes` and :meth:`heartbeat`."""
        return None if self._notifications is None else self._notifications.fileno()

    def answer_fileno(self) -> int | None:
        return self._route.answer_fileno()

    def changes(self) -> Changes:
        """Raises StoreUnavailable while Redis cannot be reached (then nothing read is lost)."""
        if self._notifications is None:
            return Changes()
        self._notifications.poll()
        found = self._notifications.take()
        if found.finished or found.queued or found.lost_track:
            self._counted(self._run([("HGETALL", self._key("queued"))])[0])
        return found

    def _broker_key(self, broker_id: str) -> str:
        return f"{self._base}broker:{broker_id}"

    # ---- task names ----------------------------------------------------------------------------------

    def remember_methods(self, methods: Iterable[str]) -> None:
        self._buffer.remember(methods)
        self._known = None

    def known_methods(self) -> Collection[str]:
        if self._known is not None and time.monotonic() - self._known[0] < KNOWN_METHODS_CACHED_S:
            return self._known[1]
        cutoff = repr(time.time() - METHODS_REMEMBERED_S)
        command = ("ZREVRANGEBYSCORE", self._methods_key, "+inf", cutoff, "LIMIT", 0, MAX_REMEMBERED_METHODS)
        (names,) = self._run([command])
        self._known = (time.monotonic(), frozenset(name.decode() for name in names))
        return self._known[1]

    def close(self) -> None:
        """Flushes; a broker that attached gives up its lease, so others may reclaim its tasks at once."""
        if self._closed:
            return
        try:
            self.flush()
            if self._me:
                self._run([("DEL", self._broker_key(self._me))])
        finally:
            self._closed = True
            if self._notifications is not None:
                self._notifications.close()
            self._route.close()
