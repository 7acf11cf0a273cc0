"""The broker's view of its nodes: what each serves, how many tasks it may take, what it holds.

Credit-based flow control: a node grants credit (one unit per free worker) and the broker never sends it
more tasks than the credit it has left, so no task waits on a busy node while another sits idle.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zerotask.store import Store, TaskRecord


@dataclass(slots=True)
class NodeState:
    identity: bytes
    envelope: tuple[bytes, ...]
    name: str
    methods: frozenset[str]
    options: dict[str, dict[str, Any]]
    workers: int
    credit: int = 0
    finished: int = 0  # outcomes reported since it connected
    draining: bool = False  # stopping: it takes no more tasks
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    last_sent: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "methods": sorted(self.methods),
            "workers": self.workers,
            "credit": self.credit,
            "tasks": len(self.tasks),
            "finished": self.finished,
        }


class NodeRegistry:
    """Connected nodes, the queued-task counts, and the assignment of queued tasks to nodes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._nodes: dict[bytes, NodeState] = {}
        self._served: Counter[str] = Counter()
        self.queued: Counter[str] = Counter(store.queued_counts())
        self._holder: dict[str, NodeState] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._rotation = 0

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(list(self._nodes.values()))

    def get(self, identity: bytes) -> NodeState | None:
        return self._nodes.get(identity)

    def serves(self, method: str) -> bool:
        return self._served[method] > 0

    def options_for(self, method: str) -> dict[str, Any]:
        """The task options (retries...) the latest node serving ``method`` announced, even if it left."""
        return self._options.get(method, {})

    def add(self, node: NodeState) -> None:
        """Register a node; a node reconnecting under the same identity replaces its old state."""
        self.remove(node.identity)
        self._nodes[node.identity] = node
        self._served.update(node.methods)
        self._options.update(node.options)

    def remove(self, identity: bytes) -> list[TaskRecord]:
        """Forget a node; returns the tasks it held (the caller decides what becomes of them)."""
        node = self._nodes.pop(identity, None)
        if node is None:
            return []
        self._served.subtract(node.methods)
        for task_id in node.tasks:
            self._holder.pop(task_id, None)
        return list(node.tasks.values())

    def hold(self, node: NodeState, record: TaskRecord) -> None:
        """Record that ``node`` holds the task (it reconnected while running it)."""
        node.tasks[record.id] = record
        self._holder[record.id] = node

    def holder(self, task_id: str) -> NodeState | None:
        return self._holder.get(task_id)

    def release(self, task_id: str) -> TaskRecord | None:
        """The task is no longer held by any node; returns it as it was assigned, if it was."""
        node = self._holder.pop(task_id, None)
        if node is None:
            return None
        return node.tasks.pop(task_id, None)

    def assign(self) -> list[tuple[NodeState, list[TaskRecord]]]:
        """Take queued tasks from the store for nodes with credit, spreading them fairly.

        Each round gives every node with credit at most its share of what is queued for it, rotating
        which node goes first, until no node with credit has anything queued that it serves.
        """
        handed: dict[bytes, tuple[NodeState, list[TaskRecord]]] = {}
        while True:
            ready = [node for node in self._nodes.values() if node.credit > 0 and self._queued_for(node)]
            if not ready:
                break
            self._rotation = (self._rotation + 1) % len(ready)
            ready = ready[self._rotation :] + ready[: self._rotation]
            progress = False
            for node in ready:
                share = math.ceil(self._queued_for(node) / len(ready))
                records = self._store.take(node.methods, min(node.credit, max(share, 1)))
                if not records:
                    # The counts said otherwise: trust the store and stop asking for these methods.
                    for method in node.methods:
                        self.queued[method] = 0
                    continue
                progress = True
                node.credit -= len(records)
                for record in records:
                    self.queued[record.method] -= 1
                    node.tasks[record.id] = record
                    self._holder[record.id] = node
                handed.setdefault(node.identity, (node, []))[1].extend(records)
            if not progress:
                break
        return list(handed.values())

    def _queued_for(self, node: NodeState) -> int:
        queued = self.queued
        return sum(queued[method] for method in node.methods if queued[method] > 0)
