"""The broker's side of the node protocol (docs/protocol.md, sections 6 and 7) and the liveness of nodes.

Each handler reads its params and calls the core, which owns what a node holds and its credit. What is
kept here is what only the transport needs: where to reach each node, its name, and when it was last
heard from and sent to (heartbeats both ways, the ZeroMQ guide's Paranoid Pirate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.assignment import NodeId, NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.discovery import Discovery
from zerotask.broker.params import param
from zerotask.broker.periodic import Periodic
from zerotask.broker.placement import read_defaults, read_queues
from zerotask.broker.progress import Progress
from zerotask.broker.replies import Envelope, Handler, Outbox, Respond
from zerotask.exceptions import InvalidParams
from zerotask.store import TaskRecord

log = logging.getLogger("zerotask.broker")

MAX_METHODS = 10_000  # task names one node may announce
MAX_RUNNING = 10_000  # distinct task ids a node may list as running when it connects


@dataclass(slots=True)
class NodeLink:
    """How the broker reaches a node, and when it last heard from it and sent to it."""

    envelope: Envelope
    name: str
    workers: int
    last_seen: float = field(default_factory=time.monotonic)
    last_sent: float = field(default_factory=time.monotonic)
    outcomes_heard: int = 0  # outcomes it reported since its connect: its ping asks (zerotask.node.delivery)
    messages_heard: int = 0  # messages since its connect: its heartbeat says how many it sent


class NodeProtocol:
    def __init__(self, core: BrokerCore, outbox: Outbox, heartbeat_s: float, liveness: int, max_message_bytes: int) -> None:
        self._core = core
        self._outbox = outbox
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self._links: dict[NodeId, NodeLink] = {}
        self.discovery = Discovery(core, max_message_bytes // 2)  # rpc.discover's answer must fit a message
        self.periodic: Periodic | None = None  # the broker's schedules of periodic tasks, which nodes announce
        self.progress: Progress | None = None  # what running tasks report of how far they got
        self._last_check = time.monotonic()

    def methods(self) -> dict[str, Handler]:
        return {
            wire.CONNECT: self.connect,
            wire.REQUEST: self.request,
            wire.RUNNING_TASKS: self.running,
            wire.FINISHED_TASKS: self.finished,
            wire.RELEASE: self.release,
            wire.HEARTBEAT: self.heartbeat,
            wire.DISCONNECT: self.disconnect,
            wire.REPORT_PROGRESS: self.report_progress,
        }

    def heard_from(self, identity: NodeId) -> bool:
        """Note that a message came from this routing id; returns whether it is a connected node."""
        link = self._links.get(identity)
        if link is None:
            return False
        link.last_seen = time.monotonic()
        link.messages_heard += 1
        return True

    def describe(self) -> list[dict[str, Any]]:
        """The connected nodes, for zerotask.broker.info and inspect."""
        described = []
        now = time.monotonic()
        for node in self._core.nodes:
            link = self._links[node.id]
            described.append(
                {
                    "name": link.name,
                    "methods": sorted(node.methods),
                    "workers": link.workers,
                    "credit": node.credit,
                    "tasks": len(node.held),
                    "finished": node.finished,
                    "last_seen_s": round(now - link.last_seen, 3),
                }
            )
        return described

    def name(self, node_id: NodeId) -> str | None:
        """The name a connected node gave."""
        link = self._links.get(node_id)
        return link.name if link is not None else None

    # ---- what the broker sends -------------------------------------------------------------------

    def send_tasks(self, handed: list[tuple[NodeSlot, list[TaskRecord]]]) -> None:
        now = time.monotonic()
        for node, records in handed:
            link = self._links[node.id]
            self._outbox.send(link.envelope, jsonrpc.notification(wire.NODE_RUN, {"tasks": [r.to_wire() for r in records]}))
            link.last_sent = now

    def revoke(self, node_id: NodeId, task_ids: list[str]) -> None:
        link = self._links.get(node_id)
        if link is not None:
            self._outbox.send(link.envelope, jsonrpc.notification(wire.NODE_REVOKE, {"task_ids": task_ids}))

    # ---- zerotask.broker.* for nodes ---------------------------------------------------------------

    def connect(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        params = request.params
        name = param(params, "node", 0, str)
        methods: list[Any] | dict[str, Any] = param(params, "methods", 1, (list, dict))
        workers = param(params, "workers", 2, int, 1)
        credit = param(params, "credit", 3, int, 0)
        descriptions: Any = param(params, "descriptions", 5, object, None)  # checked, never refused: discovery.py
        running = list(dict.fromkeys(task_id for task_id in param(params, "running", 4, list, []) if isinstance(task_id, str)))
        if len(running) > MAX_RUNNING:  # each costs a store read: a node runs at most a few per worker
            raise InvalidParams(f"a node may list at most {MAX_RUNNING} running tasks")
        # An object of {name: options} is what nodes sent before; the options no longer mean anything.
        names = list(methods)
        if not all(isinstance(method, str) for method in names):
            raise InvalidParams("methods must be an array of task names")
        if len(names) > MAX_METHODS:
            raise InvalidParams(f"a node may serve at most {MAX_METHODS} task names")
        # Every param is read before anything changes: a refused connect leaves an earlier registration as it was.
        queues = read_queues(param(params, "queues", 6, list, None))
        defaults = read_defaults(param(params, "defaults", 7, dict, None))
        identity = envelope[0]
        self._links[identity] = NodeLink(envelope, name, workers)
        self._core.connect(identity, names, credit, running, queues)
        self._core.defaults.announce(defaults)
        self._core.rate_limits.announce(defaults)
        if self.periodic is not None:
            self.periodic.announce(defaults)
        self.discovery.connected(names, descriptions)
        log.info("node %r connected: %d worker(s), %d task name(s)", name, workers, len(names))
        return {"heartbeat_s": self.heartbeat_s, "liveness": self.liveness, "max_message_bytes": self.max_message_bytes}

    def _node(self, request: jsonrpc.Request, envelope: Envelope) -> NodeSlot | None:
        node = self._core.node(envelope[0])
        if node is None and request.method != wire.DISCONNECT:
            # A node we do not know (we restarted, or declared it dead): ask it to connect again.
            self._outbox.send(envelope, jsonrpc.notification(wire.NODE_RECONNECT, {}))
        return node

    def report_progress(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        reports = param(request.params, "tasks", 0, list)
        node = self._node(request, envelope)
        if node is not None and self.progress is not None:
            self.progress.report(node, reports)
        return None

    def request(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        credit = param(request.params, "credit", 0, int)
        node = self._node(request, envelope)
        if node is not None:
            self._core.grant(node, credit)
        return None

    def release(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A node hands back tasks it will not start; ``draining`` means it takes no more."""
        task_ids = param(request.params, "task_ids", 0, list)
        draining = param(request.params, "draining", 1, bool, False)
        node = self._node(request, envelope)
        if node is not None:
            self._core.release(node, task_ids, draining)
        return None

    def running(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        task_ids = param(request.params, "task_ids", 0, list)
        node = self._node(request, envelope)
        if node is not None:
            self._core.started(node, task_ids)
        return None

    def finished(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        outcomes = param(request.params, "tasks", 0, list)
        link = self._links.get(envelope[0])
        if link is not None:
            link.outcomes_heard += len(outcomes)
        self._core.report(self._node(request, envelope), outcomes)
        return None

    def outcomes_heard(self, identity: bytes) -> int | None:
        """How many outcomes the node ``identity`` reported since it connected; None if it is not connected."""
        link = self._links.get(identity)
        return link.outcomes_heard if link is not None and self._core.node(identity) is not None else None

    def heartbeat(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A node's heartbeat may say how many messages it sent since its connect (before this one). If we
        heard fewer, some were lost on a connection ZeroMQ dropped and made again by itself (a credit
        request, a release): the node and we no longer agree on what it holds, so it connects again."""
        sent = param(request.params, "sent", 0, int, None)
        node = self._node(request, envelope)
        link = self._links.get(envelope[0])
        if node is not None and link is not None and sent is not None and sent != link.messages_heard - 1:
            log.warning(
                "node %r sent %d message(s) since it connected, %d arrived: asking it to connect again",
                link.name,
                sent,
                link.messages_heard - 1,
            )
            self._outbox.send(envelope, jsonrpc.notification(wire.NODE_RECONNECT, {}))
        return None

    def disconnect(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        self.lose(envelope[0], "disconnected")
        return None

    # ---- liveness --------------------------------------------------------------------------------

    def check_liveness(self) -> None:
        """Every heartbeat: declare nodes silent for ``liveness`` heartbeats lost, and send a heartbeat
        to those we have sent nothing for one."""
        now = time.monotonic()
        deadline = self.heartbeat_s * self.liveness
        stalled_s = now - self._last_check - self.heartbeat_s
        self._last_check = now
        if stalled_s > self.heartbeat_s:
            # Our own loop was stuck: the nodes' heartbeats may be waiting unread in the socket. Judge
            # no one on a silence we caused; give each node one more heartbeat to be heard.
            log.warning("the broker's loop was stalled %.1f s: node liveness verdicts postponed", stalled_s)
            for link in self._links.values():
                link.last_seen = max(link.last_seen, now - deadline + self.heartbeat_s)
        for identity, link in list(self._links.items()):
            if now - link.last_seen > deadline:
                self.lose(identity, f"silent for {now - link.last_seen:.1f} s")
            elif now - link.last_sent >= self.heartbeat_s:
                self._outbox.send(link.envelope, jsonrpc.notification(wire.NODE_HEARTBEAT, {}))
                link.last_sent = now

    def lose(self, identity: NodeId, reason: str) -> None:
        """Forget the node; the core queues again what it held."""
        link = self._links.pop(identity, None)
        node = self._core.lose(identity, reason)
        self.discovery.forget_unserved()
        if link is not None and node is not None:
            log.warning("node %r lost (%s): %d task(s) back to the queue", link.name, reason, len(node.held))
