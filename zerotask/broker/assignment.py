"""Assignment: which queued tasks go to which node, under credit-based flow control.

A node grants credit (one unit per free worker, plus any prefetch) and the broker never sends it more
tasks than the credit it has left, so no task waits on a busy node while another sits idle. Each round
gives every node with credit at most its share of what is queued for it, rotating which node goes first,
and asks the store for every node's tasks in one :meth:`~zerotask.store.Store.take_many`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zerotask.broker.rate_limits import RateLimits
from zerotask.store import DEFAULT_QUEUES, Outcome, Store, TaskRecord, Want

NodeId = Hashable  # the broker uses the node's routing id; the core never looks inside it


@dataclass(slots=True, eq=False)
class NodeSlot:
    """The core's view of one node: what it serves, how many tasks it may be sent, what it holds."""

    id: NodeId
    methods: frozenset[str]
    credit: int = 0
    draining: bool = False  # stopping: it takes no more tasks
    held: dict[str, TaskRecord] = field(default_factory=dict)  # task id -> the task as it was assigned
    started: set[str] = field(default_factory=set)  # held tasks it said it started (RUNNING)
    finished: int = 0  # outcomes reported since it connected
    queues: frozenset[str] = DEFAULT_QUEUES  # the named queues it takes tasks from

    def queued_for(self, queued: Mapping[str, int]) -> int:
        total = 0
        for method in self.methods:  # (a loop: a generator in sum() costs more, every round)
            total += queued.get(method, 0)
        return total


class Assigner:
    """Spreads queued tasks over nodes with credit, fairly; remembers whose turn it is. Tasks of a name
    with a rate limit go out only as its tokens allow (``limits``).

    With a store that sends ahead (``pipelined``), :meth:`begin` sends one take, with outcomes to record
    first, and :meth:`answered` reads the store's answer and hands out what it took: the broker handles
    messages while the store works."""

    def __init__(self, store: Store, limits: RateLimits | None = None) -> None:
        self._store = store
        self._rotation = 0
        self.limits = limits
        self._taking: tuple[list[Taker], Callable[[], tuple[list[bool], list[list[TaskRecord]]]]] | None = None

    @property
    def taking(self) -> bool:
        """Whether what :meth:`begin` sent waits for :meth:`answered`."""
        return self._taking is not None

    def assign(self, nodes: Iterable[NodeSlot]) -> list[tuple[NodeSlot, list[TaskRecord]]]:
        """Take queued tasks for the nodes with credit; returns each node with the tasks it now holds
        (its credit is used up accordingly). Loops until no node with credit has anything it serves."""
        if not self._store.queued_counts():  # a round that only answered: nothing to look at
            return []
        candidates = [node for node in nodes if node.credit > 0 and not node.draining]
        handed: Handed = {}
        while candidates:
            ready, wants, takers = self._round(candidates)
            if not wants or not self._hand(takers, self._store.take_many(wants), handed):
                break
            candidates = [node for node in ready if node.credit > 0]
        return list(handed.values())

    def begin(self, nodes: Iterable[NodeSlot], outcomes: Sequence[Outcome]) -> None:
        """A pipelined store's round: send ``outcomes`` to record and one take for the nodes with credit
        (if there is either), answered by :meth:`answered`. One at a time."""
        assert self._taking is None, "the last round's answer was not read"
        _, wants, takers = self._round([node for node in nodes if node.credit > 0 and not node.draining])
        if wants or outcomes:
            self._taking = (takers, self._store.take_later(wants, outcomes))

    def answered(self) -> tuple[list[bool], list[tuple[NodeSlot, list[TaskRecord]]]]:
        """Per outcome sent, whether it was recorded, and what the take took, as assign would have
        returned it (waiting for the store's answer). Raises StoreUnavailable (what it took is then
        queued again by the store's next take)."""
        assert self._taking is not None, "nothing was sent"
        (takers, answer), self._taking = self._taking, None
        try:
            recorded, taken = answer()
        except BaseException:
            self._hand(takers, [[] for _ in takers], {})  # (the rate limits' tokens go back)
            raise
        handed: Handed = {}
        self._hand(takers, taken, handed)
        return recorded, list(handed.values())

    def _round(self, candidates: list[NodeSlot]) -> tuple[list[NodeSlot], list[Want], list[Taker]]:
        """The candidates that have something queued that they serve (in this round's turn), and what to
        take for them, each its share."""
        wants: list[Want] = []
        takers: list[Taker] = []
        queued = self._store.queued_counts()
        ready = [node for node in candidates if node.queued_for(queued)] if queued else []
        if ready:
            self._rotation = (self._rotation + 1) % len(ready)
            ready = ready[self._rotation :] + ready[: self._rotation]
            for node in ready:
                self._wants(node, min(node.credit, _share(node, ready, queued)), queued, wants, takers)
        return ready, wants, takers

    def _hand(self, takers: list[Taker], taken: list[list[TaskRecord]], handed: Handed) -> bool:
        """Give each taker what its want took; returns whether any took anything."""
        progress = False
        for (node, limited, tokens), records in zip(takers, taken, strict=True):
            if limited is not None and self.limits is not None:
                self.limits.give_back(limited, tokens - len(records))
            if not records:
                continue
            progress = True
            node.credit = max(0, node.credit - len(records))
            for record in records:
                node.held[record.id] = record
            handed.setdefault(id(node), (node, []))[1].extend(records)
        return progress

    def _wants(
        self,
        node: NodeSlot,
        share: int,
        queued: Mapping[str, int],
        wants: list[Want],
        takers: list[Taker],
    ) -> None:
        """The node's wants for this round: its names without a rate limit together, and each limited
        name with queued tasks alone, for as many tasks as it has tokens (which come off its share)."""
        limited = self.limits.limited if self.limits is not None else {}
        free = node.methods
        if limited and not node.methods.isdisjoint(limited):
            free = node.methods.difference(limited)
            for method in node.methods.intersection(limited):
                if share > 0 and queued.get(method) and self.limits is not None:
                    tokens = self.limits.reserve(method, min(share, queued[method]))
                    if tokens:
                        share -= tokens
                        wants.append(_want(node, frozenset((method,)), tokens))
                        takers.append((node, method, tokens))
        if free and share > 0:
            wants.append(_want(node, free, share))
            takers.append((node, None, share))


Handed = dict[int, tuple[NodeSlot, list[TaskRecord]]]  # id(node) -> the node and the tasks it was handed
Taker = tuple[NodeSlot, str | None, int]  # per want: its node, the name it is limited to (rate limits), the tokens


def _want(node: NodeSlot, methods: frozenset[str], limit: int) -> Want:
    return (methods, limit) if node.queues == DEFAULT_QUEUES else (methods, limit, node.queues)


def _share(node: NodeSlot, ready: list[NodeSlot], queued: Mapping[str, int]) -> int:
    """What ``node`` may take this round: what is queued for it, split evenly among the ready nodes that
    compete for some of it (nodes serving other names take nothing from it)."""
    competing = sum(1 for other in ready if not other.methods.isdisjoint(node.methods))
    return max(math.ceil(node.queued_for(queued) / competing), 1)
