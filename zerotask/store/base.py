"""The Store interface: where the broker keeps the queue and the outcomes.

One interface, several implementations: :class:`~zerotask.store.memory.MemoryStore` (volatile, fast,
the test stand-in) and :class:`~zerotask.store.sqlite.SqliteStore` (durable, the default), both checked
by one contract suite (tests/test_store_contract.py). The broker calls its store from one thread only.

The interface is batched, for a store across a network: per round of its loop the broker takes tasks
for every node with one :meth:`Store.take_many` and records every outcome with one
:meth:`Store.finish_many`. Writes become durable at :meth:`Store.flush`; the broker flushes before it
acknowledges anything, which is what lets many tasks share one commit.

Tasks wait in named queues (``default`` unless told), and a node takes only from the queues it serves.
Within what a node may take, a higher ``priority`` (0 to 9) goes first, then the earlier submitted. A task
with a ``due_at`` in the future waits SCHEDULED until :meth:`Store.due` queues it.

The store records a task a node holds as ASSIGNED; whether the node has started it (RUNNING) is kept by
the broker in memory only, since after a restart such a task is queued again anyway.

A *shared* store (``shared = True``, e.g. Redis) is used by several brokers at once. Then each broker
:meth:`Store.attach`-es with its own id: the tasks it takes or claims (and the RETRY tasks it schedules)
are leased to it, the lease lasting while it calls :meth:`Store.heartbeat`; :meth:`Store.reclaim` queues
again the tasks of brokers whose lease ran out. What the other brokers do reaches this one through
:meth:`Store.fileno` (readable when something changed) and :meth:`Store.changes`. An unshared store
(memory, SQLite) keeps the no-op defaults.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zerotask.exceptions import StoreUnavailable
from zerotask.wire import DEFAULT_QUEUE, QUEUED


class _EmptyDict(dict[str, Any]):
    """A dict that stays empty: one, :data:`NO_ENTRIES`, stands for the kwargs and options of every task
    that has none, so that a million queued tasks do not hold two million empty dicts (64 bytes each).
    Changing it raises TypeError, so that nothing can fill every task's kwargs at once."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("NO_ENTRIES is shared by many tasks: replace it with a dict of your own, never change it")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = __ior__ = _refuse


NO_ENTRIES: dict[str, Any] = _EmptyDict()


@dataclass(slots=True)
class TaskRecord:
    """One task: what to call, where it stands, and how it ended (``result`` or ``error``)."""

    id: str
    method: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    state: str = QUEUED
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # per-call delivery options, e.g. time_limit_s
    queue: str = DEFAULT_QUEUE  # the named queue it waits in: only nodes serving that queue take it
    priority: int = 0  # 0 to 9: a higher one is taken first
    due_at: float | None = None  # time.time() before which it is not to run (SCHEDULED until then)
    owner: str | None = None  # with CURVE, the public key (Z85) that submitted it: who may query it
    created_at: float | None = None  # time.time() when it was queued (set by the store; again by reset)
    finished_at: float | None = None  # time.time() when its outcome was recorded

    def to_wire(self) -> dict[str, Any]:
        """The task as a node receives it (never its owner)."""
        wire = {"task_id": self.id, "method": self.method, "args": self.args, "kwargs": self.kwargs, "attempt": self.attempts}
        if self.options:
            wire.update(self.options)
        return wire


@dataclass(slots=True)
class Outcome:
    """How a task ended: ``state`` is FINISHED (with ``result``), FAILED or REVOKED (with ``error``).
    ``held``: the task was ASSIGNED to a node until now, so it has no outcome yet and is not queued (the
    store may then skip checking, and batch the write)."""

    task_id: str
    state: str
    result: Any = None
    error: dict[str, Any] | None = None
    held: bool = False


@dataclass(slots=True)
class Changes:
    """What other brokers did since the last :meth:`Store.changes` (always empty for an unshared store).
    ``finished``: ids of tasks whose outcome another broker recorded. ``queued``: another broker queued
    tasks (worth a :meth:`Store.take_many`). ``lost_track``: notifications may have been missed (the
    store reconnected), so the broker must look up every task it waits for."""

    finished: list[str] = field(default_factory=list)
    queued: bool = False
    lost_track: bool = False


# A task name is remembered this long after a node last announced it (a deploy takes minutes, not a week),
# and at most this many names: beyond, the ones announced longest ago are forgotten first.
METHODS_REMEMBERED_S = 7 * 86400.0
MAX_REMEMBERED_METHODS = 10_000  # as many as one node may announce (node_protocol.MAX_METHODS)
MAX_UNIQUE_LOCKS = 1_000_000  # @task(unique_for=...) locks kept at once: about one per queued unique task

# take_many asks for tasks with: (the methods a node serves, how many it may take at most), and the queues
# it serves as a third element when they are not only the default queue.
Want = tuple[Collection[str], int] | tuple[Collection[str], int, Collection[str]]
DEFAULT_QUEUES = frozenset((DEFAULT_QUEUE,))


def want_parts(want: Want) -> tuple[Collection[str], int, Collection[str]]:
    """``(methods, limit, queues)`` of a want."""
    return (want[0], want[1], want[2]) if len(want) == 3 else (want[0], want[1], DEFAULT_QUEUES)


class TokenBuckets:
    """Token buckets in memory, by name: the rate limits of a broker whose store is its own."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, time.time() they were counted)

    def take(self, name: str, per_s: float, burst: float, count: int) -> int:
        now = time.time()
        tokens, then = self._buckets.get(name, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - then) * per_s)
        taken = min(count, int(tokens))
        self._buckets[name] = (min(burst, tokens - taken), now)
        return taken


class Store(ABC):
    """The broker's queue and outcome store. Task ids are unique; no method raises for an unknown id.
    A store across a network may raise :class:`~zerotask.exceptions.StoreUnavailable` from any method:
    that call wrote nothing (deferred adds stay buffered for the next :meth:`flush`)."""

    shared: bool = False  # other brokers may use this store at the same time (see the module docstring)
    pipelined: bool = False  # take_later sends ahead: the broker reads its answer later
    holds_at_add: bool = False  # add_held works: the store writes its adds at once, not deferred to flush

    @abstractmethod
    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        """Queue a new task: QUEUED, or SCHEDULED if its ``due_at`` is later than now. Returns False, and
        changes nothing, if the id exists.
        ``size_hint``: about how many bytes of JSON the task came as, for a store that bounds its memory."""

    def add_held(self, record: TaskRecord, size_hint: int = 0) -> bool:
        """Only where ``holds_at_add``: add a new task that goes to a node at once (the broker's direct
        path: nothing was queued and a node was free), as :meth:`add` then :meth:`claim` would: ASSIGNED,
        with a place in the queue kept for a requeue. Returns False, and changes nothing, if the id
        exists. Never asked for a task due later."""
        raise NotImplementedError(f"{type(self).__name__} does not hold tasks at add")

    @abstractmethod
    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        """For each want ``(methods, limit[, queues])`` in order, atomically move up to ``limit`` QUEUED
        tasks whose method is in ``methods`` and whose queue is in ``queues`` (the default queue only, when
        not given) to ASSIGNED: the highest priority first, then the earliest submitted. Returns one list per
        want, in that order. No task is returned twice."""

    def take_later(
        self, wants: Sequence[Want], outcomes: Sequence[Outcome] = ()
    ) -> Callable[[], tuple[list[bool], list[list[TaskRecord]]]]:
        """:meth:`finish_many` of ``outcomes``, then :meth:`take_many` of ``wants``, with the answers read
        later, by calling what this returns: a store across a network (``pipelined``) sends them now, after
        the tasks added so far, and the broker handles other messages while the store works. Until the
        answer is read, the store's other calls see them done (it runs in order), and the adds carried are
        not known durable: their acknowledgements wait. Raises StoreUnavailable now, or when read."""
        recorded = self.finish_many(outcomes) if outcomes else []
        taken = self.take_many(wants) if wants else []
        return lambda: (recorded, taken)

    @abstractmethod
    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        """Move these tasks to ASSIGNED if they are QUEUED, RETRY or ASSIGNED (a node says it runs them);
        returns the ones moved. Unknown ids, SCHEDULED and final tasks are left out."""

    @abstractmethod
    def requeue(self, task_ids: Iterable[str]) -> None:
        """Put ASSIGNED or RETRY tasks back to QUEUED, each in its old place: it is taken before tasks
        queued after it. Other ids are ignored."""

    @abstractmethod
    def retry(self, task_id: str, attempts: int) -> None:
        """Move a task that is not final to RETRY, recording ``attempts``."""

    @abstractmethod
    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Record outcomes, in order, each unless its task already has one (or is unknown); returns, per
        outcome, whether this call recorded it. A FINISHED task keeps its result, not its arguments; a FAILED
        or REVOKED one keeps its arguments too, so that it can be :meth:`reset`."""

    @abstractmethod
    def expire(self, before: float, limit: int = 10_000) -> int:
        """Forget up to ``limit`` tasks whose outcome was recorded before ``before`` (a ``time.time()``
        value), oldest first. Returns how many were forgotten; unfinished tasks are never touched."""

    @abstractmethod
    def due(self, now: float, limit: int = 10_000) -> int:
        """Queue up to ``limit`` SCHEDULED tasks whose ``due_at`` is ``now`` or earlier, earliest first,
        each in the place its submission gave it (before tasks submitted after it). Returns how many."""

    @abstractmethod
    def next_due(self) -> float | None:
        """The earliest ``due_at`` of a SCHEDULED task, or None if none waits. Cheap."""

    @abstractmethod
    def claim_slot(self, name: str, slot: float) -> bool:
        """Atomically take the run of periodic task ``name`` due at ``slot`` (a time.time() value): True if
        no run at ``slot`` or later was taken before, for this name, by any broker sharing the store. Keeps
        the latest slot of at most MAX_REMEMBERED_METHODS names (the ones claimed longest ago go first)."""

    @abstractmethod
    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        """Atomically: if the lock ``key`` is held (until a time later than now) by another task that has
        no outcome yet, return that task's id; otherwise give the lock to ``task_id`` until ``until`` (a
        time.time() value) and return None. (A shared store counts a holder it does not know yet as holding
        for up to 10 s after it took the lock: another broker's add may not be stored yet.) Keeps at most
        MAX_UNIQUE_LOCKS locks (the oldest go first)."""

    _token_buckets: TokenBuckets | None = None

    def take_tokens(self, name: str, per_s: float, burst: float, count: int) -> int:
        """Take up to ``count`` tokens from the bucket ``name`` (a negative count gives tokens back), which
        refills at ``per_s`` tokens a second up to ``burst``; returns how many were taken. Atomic across the
        brokers sharing a store; an unshared store keeps its buckets in memory (full again after a restart)."""
        if self._token_buckets is None:
            self._token_buckets = TokenBuckets()
        return self._token_buckets.take(name, per_s, burst, count)

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None if the id is unknown."""

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """:meth:`get` of each id, in order (a store across a network answers them in one round trip)."""
        return [self.get(task_id) for task_id in task_ids]

    @abstractmethod
    def queued_counts(self) -> Mapping[str, int]:
        """How many tasks are QUEUED, by method (only methods with some). Cheap: the broker asks every
        round, so a store answers from what it keeps in memory."""

    @abstractmethod
    def recover(self) -> int:
        """Put every ASSIGNED or RETRY task back to QUEUED (no node holds it any more when a broker
        starts). Returns how many tasks are queued afterwards."""

    @abstractmethod
    def state_counts(self) -> Mapping[str, int]:
        """How many tasks are in each stored state (SCHEDULED, QUEUED, ASSIGNED, RETRY, FINISHED, FAILED, REVOKED;
        only states with some). Cheap: kept in memory, loaded at open and updated by every write."""

    @abstractmethod
    def oldest_queued(self) -> Mapping[str, float]:
        """The ``created_at`` of the first task in line, by method (only methods with queued tasks).
        Cheap: one lookup per queued method."""

    @abstractmethod
    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        """Up to ``limit`` tasks, newest first by their time (``finished_at`` for a task with an outcome,
        ``created_at`` otherwise), only those in ``state``, of ``method`` and with a time before ``before``
        when given. Unfinished tasks come with their arguments."""

    @abstractmethod
    def reset(self, task_id: str) -> bool:
        """Queue a FAILED or REVOKED task again as new: at the back of its queue (now, whatever its
        ``due_at`` was), attempts 0, its outcome and finished_at cleared, created_at now. Returns False,
        changing nothing, for any other task."""

    def flush(self) -> list[TaskRecord]:
        """Make every write so far durable (a no-op for volatile stores). A store may defer :meth:`add`
        until here (one round trip for many tasks): then it returns the records it was given whose id
        turned out to exist already, which it did not add (the caller looks up the task that has the id).
        A store that checks at :meth:`add` returns []."""
        return []

    # ---- several brokers on one store (no-ops for an unshared store) ------------------------------

    def attach(self, broker_id: str, lease_s: float) -> None:  # noqa: B027 - a no-op unless shared
        """From now on this broker is ``broker_id``: tasks it takes, claims or retries are leased to it
        for ``lease_s`` seconds, renewed by every :meth:`heartbeat`. Called once, before :meth:`recover`
        (which, for a shared store, requeues only the tasks of brokers whose lease ran out)."""

    def heartbeat(self) -> None:  # noqa: B027 - a no-op unless shared
        """Renew this broker's lease. The broker calls it at least every ``lease_s / 3`` seconds."""

    def reclaim(self) -> int:
        """Queue again, each in its old place, the ASSIGNED and RETRY tasks leased to brokers whose lease
        ran out; returns how many. Always 0 for an unshared store (its broker requeues at :meth:`recover`)."""
        return 0

    def fileno(self) -> int | None:
        """A file descriptor that becomes readable when other brokers changed something (then call
        :meth:`changes`), or None for an unshared store."""
        return None

    def answer_fileno(self) -> int | None:
        """A file descriptor that becomes readable when the answer of a call sent ahead (``pipelined``)
        arrives, or None."""
        return None

    def changes(self) -> Changes:
        """What other brokers did since the last call (reading every notification that arrived). Cheap."""
        return Changes()

    @abstractmethod
    def remember_methods(self, methods: Iterable[str]) -> None:
        """A node serves these task names now (at any broker that shares the store). Durable with the
        next :meth:`flush`."""

    @abstractmethod
    def known_methods(self) -> Collection[str]:
        """The task names a node announced within METHODS_REMEMBERED_S (at any broker sharing the store;
        at most MAX_REMEMBERED_METHODS, the latest): tasks of these names wait in the queue while no
        node serves them, as during a deploy. Cheap: from memory (a shared store may cache for a second)."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()


__all__ = [
    "MAX_REMEMBERED_METHODS",
    "MAX_UNIQUE_LOCKS",
    "METHODS_REMEMBERED_S",
    "DEFAULT_QUEUES",
    "Changes",
    "Outcome",
    "Store",
    "StoreUnavailable",
    "TaskRecord",
    "Want",
    "want_parts",
]
