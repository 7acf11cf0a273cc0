"""The direct path: a new task that finds nothing queued and a free node that serves it goes to that node
at once, added to the store as held (:meth:`~zerotask.store.Store.add_held`), without a place in line to
be taken from at the round's end.

A blocking call on an idle system is the common case, and for it the queue was pure cost: an entry
appended, then the assigner's round (what is queued, which nodes compete, their shares) and the store's
take to find it again. With nothing queued, no task waits that the new one could overtake, so the order
is the queue's. Tasks due later, tasks of a rate-limited name and stores that defer their adds (Redis:
``holds_at_add`` is False) take the queue. Free nodes are tried in turn, as the assigner does, so that calls spread over them.
"""

from __future__ import annotations

from collections.abc import Mapping

from zerotask.broker.assignment import NodeSlot
from zerotask.broker.rate_limits import RateLimits
from zerotask.store import Store, TaskRecord

MAX_TRIED = 16  # nodes looked at for one task: beyond, it waits in the queue (the assigner looks at all)


class DirectPath:
    """Which free node a new task may go to now, and the tasks handed so, until the round's end sends
    them (:meth:`take`)."""

    def __init__(self, store: Store, limits: RateLimits) -> None:
        self._store = store
        self._limits = limits
        self._turn = 0
        self._handed: dict[int, tuple[NodeSlot, list[TaskRecord]]] = {}  # id(node) -> it and its tasks

    @property
    def handed(self) -> bool:
        return bool(self._handed)

    def node_for(self, record: TaskRecord, nodes: list[NodeSlot]) -> NodeSlot | None:
        """A free node that serves the task, if it may skip the queue; else None."""
        if record.due_at is not None or not self._store.holds_at_add or self._store.queued_counts():
            return None
        if self._limits.limited and record.method in self._limits.limited:
            return None
        count = len(nodes)
        for step in range(min(count, MAX_TRIED)):
            node = nodes[(self._turn + step) % count]
            if node.credit > 0 and not node.draining and record.method in node.methods and record.queue in node.queues:
                self._turn = (self._turn + step + 1) % count
                return node
        return None

    def hand(self, node: NodeSlot, record: TaskRecord) -> NodeSlot:
        """The task (added as held) is the node's, which this returns: its credit pays for it now, as
        the assigner's would."""
        node.credit -= 1
        node.held[record.id] = record
        self._handed.setdefault(id(node), (node, []))[1].append(record)
        return node

    def take(self, holders: Mapping[str, NodeSlot]) -> list[tuple[NodeSlot, list[TaskRecord]]]:
        """The tasks handed since the last take, by node, to send. A task that left its node meanwhile
        (``holders``, task id -> node, no longer says it is that node's: revoked, released, or the node
        was lost and it was requeued then) is not sent, and a connected node gets its credit back."""
        handed, self._handed = self._handed, {}
        sent = []
        for node, records in handed.values():
            kept = [record for record in records if holders.get(record.id) is node]
            if len(kept) < len(records) and not node.draining:
                node.credit += len(records) - len(kept)
            if kept:
                sent.append((node, kept))
        return sent
