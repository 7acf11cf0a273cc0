"""The broker's view of its nodes: what each serves, how many tasks it may take, what it holds.

Credit-based flow control: a node grants credit (one unit per free worker) and the broker never sends it
more tasks than the credit it has left, so no task waits on a busy node while another sits idle.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc
from zerotask.exceptions import InvalidParams
from zerotask.params import param
from zerotask.peers import Envelope, Respond
from zerotask.store import FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, RUNNING, Store, TaskRecord

log = logging.getLogger("zerotask.broker")


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


class NodeMethods:
    """The broker's side of the node protocol (zerotask.broker.connect ... disconnect) and the liveness
    of nodes. A part of :class:`zerotask.broker.Broker`, kept here with the registry it works on; it
    uses the broker's store, registry and outbox."""

    store: Store
    nodes: NodeRegistry
    heartbeat_s: float
    liveness: int
    max_message_bytes: int

    # Provided by Broker and Server.
    def _send(self, envelope: Envelope, message: dict[str, Any] | list[Any]) -> None:
        raise NotImplementedError

    def _finish(
        self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None, unfinished: bool = False
    ) -> None:
        raise NotImplementedError

    def _requeue(self, records: list[TaskRecord]) -> None:
        raise NotImplementedError

    def _publish(self, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Any:
        raise NotImplementedError

    # ---- zerotask.broker.* for nodes ---------------------------------------------------------------

    def _connect_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        params = request.params
        name = param(params, "node", 0, str)
        methods = param(params, "methods", 1, dict)
        workers = param(params, "workers", 2, int, 1)
        credit = param(params, "credit", 3, int, 0)
        if not all(isinstance(options, dict) for options in methods.values()):
            raise InvalidParams("methods must map each task name to an object of options")
        running = param(params, "running", 4, list, [])
        node = NodeState(envelope[0], envelope, name, frozenset(methods), methods, workers, max(credit, 0))
        self._requeue(self.nodes.remove(envelope[0]))  # a node that reconnects starts afresh
        self.nodes.add(node)
        for task_id in running:  # tasks it kept running while we were apart stay its own
            record = self.store.get(task_id) if isinstance(task_id, str) else None
            if record is None or record.state in FINAL_STATES or self.nodes.holder(task_id) is not None:
                continue
            if record.state == QUEUED:
                self.nodes.queued[record.method] -= 1
            self.store.set_state(task_id, RUNNING)
            self.nodes.hold(node, record)
        log.info("node %s connected: %d worker(s), %d task name(s)", name, workers, len(methods))
        return {"heartbeat_s": self.heartbeat_s, "liveness": self.liveness, "max_message_bytes": self.max_message_bytes}

    def _node_for(self, request: jsonrpc.Request, envelope: Envelope) -> NodeState | None:
        node = self.nodes.get(envelope[0])
        if node is None and request.method != "zerotask.broker.disconnect":
            # A node we do not know (we restarted, or declared it dead): ask it to connect again.
            self._send(envelope, jsonrpc.notification("zerotask.node.reconnect", {}))
        return node

    def _request_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        credit = param(request.params, "credit", 0, int)
        node = self._node_for(request, envelope)
        if node is not None and not node.draining:
            node.credit = max(0, node.credit + credit)
        return None

    def _release_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A node hands back tasks it will not start; ``draining`` means it takes no more."""
        task_ids = param(request.params, "task_ids", 0, list)
        draining = param(request.params, "draining", 1, bool, False)
        node = self._node_for(request, envelope)
        if node is None:
            return None
        held = [
            self.nodes.release(task_id) for task_id in task_ids if isinstance(task_id, str) and self.nodes.holder(task_id) is node
        ]
        self._requeue([record for record in held if record is not None])
        if draining:
            node.draining = True
            node.credit = 0
        return None

    def _running_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        task_ids = param(request.params, "task_ids", 0, list)
        node = self._node_for(request, envelope)
        # RUNNING lives in the broker's memory only: after a restart a task is queued again whatever it
        # was, so writing it to the store would buy nothing. Status queries look here first.
        for task_id in task_ids:
            if node is not None and isinstance(task_id, str) and task_id in node.tasks:
                node.tasks[task_id].state = RUNNING
        return None

    def _finished_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        outcomes = param(request.params, "tasks", 0, list)
        sender = self._node_for(request, envelope)
        if sender is not None:
            sender.finished += len(outcomes)
        for outcome in outcomes:
            if not isinstance(outcome, dict) or not isinstance(outcome.get("task_id"), str):
                raise InvalidParams("each finished task is an object with a task_id")
            task_id = outcome["task_id"]
            held = self.nodes.release(task_id)
            error = outcome.get("error")
            if error is not None:
                if not isinstance(error, dict):
                    error = jsonrpc.error_object(jsonrpc.TASK_FAILED, str(error))
                if not self._retry(task_id, held, error):
                    self._finish(task_id, FAILED, error=error, unfinished=held is not None)
            else:
                # A task some node holds has no outcome yet, so the store need not check (and may batch).
                self._finish(task_id, FINISHED, result=outcome.get("result"), unfinished=held is not None)
        return None

    def _retry(self, task_id: str, held: TaskRecord | None, error: dict[str, Any]) -> bool:
        """Schedule another attempt if the task's policy allows one; False if the failure is final.

        The worker says whether the exception is one to retry (``data.retryable``); the broker counts
        attempts (kept in the store) and waits ``retry_backoff_s * 2**(attempt - 1)``, capped, in state RETRY.
        """
        data = error.get("data")
        if not isinstance(data, dict) or not data.get("retryable"):
            return False
        record = held if held is not None else self.store.get(task_id)
        if record is None or record.state in FINAL_STATES:
            return False
        options = self.nodes.options_for(record.method)
        if record.attempts >= int(options.get("retries", 0)):
            return False
        attempt = record.attempts + 1
        backoff_s = float(options.get("retry_backoff_s", 1.0)) * 2 ** (attempt - 1)
        delay_s = min(backoff_s, float(options.get("retry_backoff_max_s", 60.0)))
        self.store.set_state(task_id, RETRY, attempts=attempt)
        self.call_later(delay_s, lambda: self._retry_due(task_id))
        self._publish("zerotask.event.retry", {"task_id": task_id, "attempt": attempt, "delay_s": delay_s})
        log.info(
            "task %s (%s) failed, attempt %d of %d in %.2f s", task_id, record.method, attempt, options.get("retries"), delay_s
        )
        return True

    def _retry_due(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is not None and record.state == RETRY:  # not revoked in the meantime
            self._requeue([record])

    def _heartbeat_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        self._node_for(request, envelope)
        return None

    def _disconnect_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        self._node_lost(envelope[0], "disconnected")
        return None

    # ---- liveness --------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = time.monotonic()
        deadline = self.heartbeat_s * self.liveness
        for node in self.nodes:
            if now - node.last_seen > deadline:
                self._node_lost(node.identity, f"silent for {now - node.last_seen:.1f} s")
            elif now - node.last_sent >= self.heartbeat_s:
                self._send(node.envelope, jsonrpc.notification("zerotask.node.heartbeat", {}))
                node.last_sent = now

    def _node_lost(self, identity: bytes, reason: str) -> None:
        node = self.nodes.get(identity)
        if node is None:
            return
        held = self.nodes.remove(identity)
        log.warning("node %s lost (%s): %d task(s) back to the queue", node.name, reason, len(held))
        self._requeue(held)
