"""Broker: the transport around the core. It binds the sockets, reads JSON-RPC, routes each request to
its handler, and sends replies once the store has committed what they say.

The broker owns two sockets: a ROUTER for requests (clients and nodes alike, every message JSON-RPC
2.0) and an XPUB that announces task events. A request whose method is a task name is queued as a
task and answered when a node has run it; ``zerotask.broker.*`` methods are the control path.

Nothing leaves the broker before the store has committed it: replies and messages to nodes are
collected in the outbox while a round of incoming messages is handled, the store is flushed once, then
everything is sent. That is how many tasks share one commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from zerotask import __version__, jsonrpc, sockets, tracing, wire
from zerotask.broker.admin_protocol import AdminProtocol
from zerotask.broker.client_protocol import DEFAULT_MAX_WAITING, ClientProtocol
from zerotask.broker.core import DEFAULT_MAX_QUEUED, BrokerCore
from zerotask.broker.events import EventPublisher
from zerotask.broker.finish_spans import FinishSpans
from zerotask.broker.hooks import Hooks, Retries, TimeLimits
from zerotask.broker.metrics import BrokerMetrics
from zerotask.broker.node_protocol import NodeProtocol
from zerotask.broker.params import param
from zerotask.broker.periodic import Periodic
from zerotask.broker.progress import Progress
from zerotask.broker.replies import DEFERRED, Envelope, Handler, Outbox, PeerGone, Reply, Respond, split_frames
from zerotask.broker.security import Security
from zerotask.broker.stats import Throughput
from zerotask.broker.upkeep import StoreUpkeep
from zerotask.broker.workflows import Workflows
from zerotask.exceptions import StoreUnavailable, ZerotaskError
from zerotask.loop import EventLoop, give_back_memory
from zerotask.store import Store, open_store
from zerotask.task import Dispatcher, default_dispatcher

log = logging.getLogger("zerotask.broker")

# This machine only: without CURVE, a broker other machines can reach runs anything for anyone (security.py).
DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"
DEFAULT_STORE = "./zerotask.db"
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_LIVENESS = 3
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_RESULT_TTL_S = 86400.0
# Requests (batch items count one each) handled per round before the store is flushed and replies go
# out: big enough to share a commit among many tasks, small enough that nodes keep getting work while a
# client floods us with submits.
_ROUND_BUDGET = 1000
# And a round ends after this many bytes of messages, whatever their count: parsing a 10 MB message of
# pathological JSON takes ~0.4 s, and thirty of them in one round held the loop (heartbeats, timers) 9.5 s.
_ROUND_BYTES = 8 * 1024 * 1024
_LARGE_MESSAGE_BYTES = 1024 * 1024  # after a round that read a message this large, the C heap's free memory goes back
MAX_BATCH = 1000  # requests in one JSON-RPC batch: a larger one is refused whole, before any runs
# A node's message wraps a result in a few levels (batch, notification, params, outcomes, outcome) that a
# worker's check of MAX_DEPTH does not count; a client's task arguments get no such allowance, so that
# whatever is queued can be sent on to a node.
_NODE_DEPTH = jsonrpc.MAX_DEPTH + 8
_ANNOUNCE_S = 3600.0  # how often the store is told again which names this broker's nodes serve
_RESUME_WORKFLOWS_S = 30.0  # with a shared store, how often unfinished workflows are looked at again
_STORE_PROBE_S = 0.25  # how often a broker whose store is unreachable tries it again


class Broker(EventLoop):
    """``Broker().start()`` serves on tcp://127.0.0.1:5555 (requests) and :5556 (events), storing tasks in
    ./zerotask.db. ``store`` is a Store or a spec for :func:`zerotask.store.open_store`. Outcomes are kept
    ``result_ttl_s`` seconds (a day; None keeps them for ever), as Celery's result_expires. ``hooks`` plug
    features into the core (:mod:`zerotask.broker.hooks`), after the built-in retries and time limits.
    Bounds, so that no peer can grow or stall the broker: at most ``max_queued`` tasks queued in all,
    ``max_waiting`` answers owed to one peer, MAX_BATCH requests per batch, ``max_message_bytes`` per
    message; beyond, a clear error (QueueFull, -32005, for the first two).
    Security (:mod:`zerotask.broker.security`): ``curve_secret`` (the broker's secret certificate) with
    ``clients``, ``nodes`` and ``admins`` (directories of public certificates) turns CURVE on and admits
    those keys only, each in its role; without it, an endpoint beyond this machine needs ``insecure``.
    ``metrics`` (``HOST:PORT``) serves Prometheus metrics there (:mod:`zerotask.broker.metrics`)."""

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        publish: str = DEFAULT_PUBLISH,
        store: Store | str = DEFAULT_STORE,
        dispatcher: Dispatcher | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        liveness: int = DEFAULT_LIVENESS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        result_ttl_s: float | None = DEFAULT_RESULT_TTL_S,
        hooks: Sequence[Hooks] = (),
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_waiting: int = DEFAULT_MAX_WAITING,
        curve_secret: str | None = None,
        clients: str | None = None,
        nodes: str | None = None,
        admins: str | None = None,
        insecure: bool = False,
        metrics: str | None = None,
    ) -> None:
        super().__init__()
        self.bind_endpoint = sockets.check_endpoint(bind, bind=True)
        self.publish_endpoint = sockets.check_endpoint(publish, bind=True)
        self._store_spec = store
        self.dispatcher = dispatcher or default_dispatcher
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self.result_ttl_s = result_ttl_s
        self.hooks = list(hooks)
        self.max_queued = max_queued
        self.max_waiting = max_waiting
        # CURVE, who may connect and in which role (zerotask.broker.security); raises ValueError for keys it
        # cannot use, or for an endpoint other machines reach without CURVE (unless insecure).
        endpoints = [self.bind_endpoint, self.publish_endpoint]
        self.security = Security(endpoints, curve_secret, clients, nodes, admins, insecure)
        # Prometheus on HOST:PORT (zerotask.broker.metrics): a hook; beyond this machine only with CURVE or insecure.
        self.metrics = BrokerMetrics(metrics, insecure or self.security.enabled) if metrics else None
        if self.metrics is not None:
            self.hooks.append(self.metrics)

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        assert self.context is not None
        self.store = self._store_spec if isinstance(self._store_spec, Store) else open_store(self._store_spec)
        self.instance = uuid.uuid4().hex  # clients compare it to learn that the broker restarted
        # With a store that other brokers share, what this broker's nodes hold is leased to it: if it dies
        # (or loses the store) for longer than its nodes would take to look dead, another broker queues it again.
        lease_s = self.heartbeat_s * self.liveness
        self.store.attach(self.instance, lease_s)
        queued = self.store.recover()
        self.events = EventPublisher()
        self.throughput = Throughput()
        self.progress = Progress(self.events)  # what running tasks report of how far they got
        hooks = [Retries(), TimeLimits(), self.events, self.throughput, self.progress, *self.hooks]
        if tracing.available():
            hooks.append(FinishSpans())
        self.workflows = Workflows(self.max_message_bytes)  # last: the others hear of a member before its workflow
        hooks.append(self.workflows)
        self.core = BrokerCore(
            self.store, self, hooks, local=self.dispatcher, result_ttl_s=self.result_ttl_s, max_queued=self.max_queued
        )
        if self.metrics is not None:
            self.metrics.start(self.core, self)
        self.outbox = Outbox(self.max_message_bytes)
        self._backlog_wakeup = False
        self._read_large = False  # this round read a message over _LARGE_MESSAGE_BYTES
        self._answer_fd: int | None = None  # while a take sent ahead waits: where its answer comes
        self.nodes = NodeProtocol(self.core, self.outbox, self.heartbeat_s, self.liveness, self.max_message_bytes)
        self.nodes.periodic = Periodic(self.store, self, lambda name, task_id: self.core.submit(name, [], {}, task_id))
        self.workflows.attach(self.core, self, self.nodes.revoke)
        self.workflows.resume_all()  # in slices, from the loop: what a broker that died left undone
        self.clients = ClientProtocol(self.core, self.outbox, self, self.nodes, self.max_waiting, self.security, self.workflows)
        self.nodes.progress = self.clients.progress = self.progress
        self._methods: dict[str, Handler] = {
            **self.clients.methods(),
            **self.nodes.methods(),
            **AdminProtocol(self.core, self.nodes, self.throughput).methods(),
            wire.INFO: self._info,
            wire.PING: self._ping,
            wire.DISCOVER: self.nodes.discovery.discover,
        }
        self.security.start(self.context)  # the ZAP handler, before a CURVE socket binds
        self.requests = sockets.request_router(self.context, self.bind_endpoint, self.max_message_bytes, self.security.keys)
        self.publisher = sockets.event_publisher(self.context, self.publish_endpoint, self.security.keys)
        self._receive = self.security.receiver(self.requests)
        self._send = sockets.sender(self.requests)
        self.security.watch(self.requests, self.add_socket)
        self.security.watch(self.publisher, self.add_socket)
        self.add_socket(self.requests, self._on_requests)
        self.add_socket(self.publisher, self._on_subscription)
        self.call_every(self.heartbeat_s, self.nodes.check_liveness)
        self.call_every(_ANNOUNCE_S, self.core.announce)
        self.upkeep = StoreUpkeep(self.core, self, self.nodes.revoke, self.workflows.resume_all, self.result_ttl_s)
        if self.store.shared:
            self.call_every(min(self.heartbeat_s, lease_s / 3), self.upkeep.keep_lease)
            # A broker that died between a member's outcome and the next step (a shared store writes them
            # apart) may have held no task to reclaim: look at the unfinished workflows now and then too.
            self.call_every(_RESUME_WORKFLOWS_S, self.workflows.resume_all)
        self.core.due_timer.arm(None)
        self.upkeep.watch()
        self._store_probe = False
        if self.result_ttl_s:
            self.call_every(min(10.0, max(self.result_ttl_s / 10, 0.1)), self.upkeep.expire)
        log.info(
            "broker on %s, events on %s, %d task(s) queued",
            sockets.bound_endpoint(self.requests),
            sockets.bound_endpoint(self.publisher),
            queued,
        )

    def teardown(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self.security.stop()
        try:
            self.store.close()
        except StoreUnavailable as error:  # what it still buffered was never acknowledged: nothing is lost
            log.warning("the store was unreachable as the broker stopped: %s", error)
        log.info("broker stopped")

    # ---- the loop --------------------------------------------------------------------------------

    def _on_requests(self) -> None:
        budget, size = _ROUND_BUDGET, 0
        while budget > 0 and size < _ROUND_BYTES:
            try:
                frames = self._receive()  # with CURVE, also who sent it (self.security.sender)
            except zmq.Again:
                return
            size += len(frames[-1])
            self._read_large = self._read_large or len(frames[-1]) > _LARGE_MESSAGE_BYTES
            budget -= self._on_message(frames)
            if not sockets.waiting(self.requests):
                return

    def _on_subscription(self) -> None:
        while True:
            try:
                self.events.subscription(self.publisher.recv(zmq.NOBLOCK))
            except zmq.Again:
                return

    def after_events(self) -> None:
        """The end of a round: hand out tasks, commit, then send what the commit made true."""
        self.clients.ids_this_round = 0
        if self.core.taking:  # the last round's take, sent ahead: one at a time (this round's adds go with the next)
            self._take_answered()
        try:
            if not self.core.writes.down:  # (while it is, the commit's probe alone tries the store)
                self.nodes.send_tasks(self.core.assign())
        except StoreUnavailable:
            pass  # the commit says so, and tries again
        if not self.core.commit():
            self.outbox.hold()  # it acknowledges tasks the store does not have yet
        elif not self.core.writes.down:
            self.outbox.release()
        elif not self._store_probe:
            self._store_probe = True  # come back to try the store, even if no one sends anything
            self.call_later(_STORE_PROBE_S, self._store_probed)
        self._deliver()
        if self._read_large:  # (after the replies: they need not wait for it)
            self._read_large = False
            give_back_memory()
        if self.core.taking:  # read its answer as soon as it comes, or at the next round's end
            self._answer_fd = self.store.answer_fileno()
            if self._answer_fd is None:
                self._take_answered()
            else:
                self.add_socket(self._answer_fd, self._take_answered)

    def _take_answered(self) -> None:
        """Send the tasks of the take sent ahead, and what waited for the adds it carried; messages of
        this round so far wait for its own commit."""
        if self._answer_fd is not None:
            self.remove_socket(self._answer_fd)
            self._answer_fd = None
        later = self.outbox.take()
        self.nodes.send_tasks(self.core.take_answered())
        if not self.core.writes.down:
            self.outbox.release()
        self._deliver()
        self.outbox.put_back(later)

    def _deliver(self) -> None:
        for event in self.events.take():
            self.publisher.send(event, zmq.NOBLOCK)
        for envelope in self.outbox.deliver(self._send_reply):
            self.nodes.lose(envelope[0], "unreachable")
        if self.outbox.backlogged and not self._backlog_wakeup:
            self._backlog_wakeup = True  # come back soon: a slow reader's replies wait for room
            self.call_later(0.001, self._backlog_woken)

    def _send_reply(self, envelope: Envelope, payload: bytes) -> bool:
        send = self._send
        try:
            for frame in envelope:  # send_multipart, without its list and enum operations
                send(frame, sockets.MORE_NOBLOCK)
            send(payload, sockets.NOBLOCK)
        except zmq.Again:  # the peer's queue is full (SNDHWM): it reads slowly, or not at all
            return False
        except zmq.ZMQError as error:  # EHOSTUNREACH: the peer is gone, its own problem
            log.debug("dropping a message to a vanished peer: %s", error)
            raise PeerGone from error
        return True

    def _store_probed(self) -> None:
        self._store_probe = False  # after_events, which follows, commits: that tries the store

    def _backlog_woken(self) -> None:
        self._backlog_wakeup = False  # after_events, which follows, delivers what waits

    def _on_message(self, frames: list[bytes]) -> int:
        """Handle one incoming message; returns how many requests it held."""
        envelope, payload = split_frames(frames)
        from_node = self.nodes.heard_from(envelope[0])
        if payload is None:
            # The message stays the specification's; what was wrong goes in data.
            error = jsonrpc.error_object(jsonrpc.INVALID_REQUEST, data="expected one frame after the envelope")
            self.outbox.send(envelope, jsonrpc.error(None, error))
            return 1
        try:
            # Nested deeper than MAX_DEPTH, what a client sends could not be sent on to a node (nor, from a
            # peer that calls itself a node, deeper than _NODE_DEPTH).
            message = jsonrpc.loads(payload, max_depth=_NODE_DEPTH if from_node else jsonrpc.MAX_DEPTH)
        except jsonrpc.InvalidMessage as problem:
            self.outbox.send(envelope, jsonrpc.error(None, jsonrpc.error_object(problem.code)))
            return 1
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                data = f"a batch holds 1 to {MAX_BATCH} requests" if message else None
                self.outbox.send(envelope, jsonrpc.error(None, jsonrpc.error_object(jsonrpc.INVALID_REQUEST, data=data)))
                return 1
            reply = Reply(envelope, self.outbox.send, is_batch=True)
            self.core.size_hint = len(payload) // len(message)
            for item in message:
                self._on_item(item, envelope, reply)
            reply.seal()
            return len(message)
        self.core.size_hint = len(payload)
        self._on_item(message, envelope, Reply(envelope, self.outbox.send, is_batch=False))
        return 1

    def _on_item(self, item: Any, envelope: Envelope, reply: Reply) -> None:
        if jsonrpc.is_response(item):
            return  # the broker sends only notifications, so a response is a peer's mistake: ignore it
        try:
            request = jsonrpc.parse_request(item)
        except jsonrpc.InvalidMessage as problem:
            reply.slot()(jsonrpc.error(problem.request_id, jsonrpc.error_object(problem.code)))
            return
        respond = None if request.is_notification else reply.slot()
        failure: dict[str, Any] | None = None
        try:
            if self.security.keyring is not None:
                self.security.check(request.method)  # Forbidden for a role that may not call it
            handler = self._methods.get(request.method, self.clients.by_name)
            value = handler(request, envelope, respond)
        except ZerotaskError as error:
            value, failure = None, error.to_error_object()
        except Exception:  # a bug here must not take the broker down with it, nor show its insides to peers
            log.exception("internal error handling %r", request.method)
            value, failure = None, jsonrpc.error_object(jsonrpc.INTERNAL_ERROR)
        if respond is None or value is DEFERRED:
            return
        respond(jsonrpc.error(request.id, failure) if failure else jsonrpc.result(request.id, value))

    # ---- about the broker itself -------------------------------------------------------------------

    def _info(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        return {
            "version": __version__,
            "publish": sockets.bound_endpoint(self.publisher),
            "nodes": self.nodes.describe(),
            "queued": dict(self.core.queued),
            "heartbeat_s": self.heartbeat_s,
            "liveness": self.liveness,
            "max_message_bytes": self.max_message_bytes,
            "instance": self.instance,
        }

    def _ping(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        answer: dict[str, Any] = {"instance": self.instance, "max_message_bytes": self.max_message_bytes}
        if param(request.params, "finished", 0, int, None) is not None:  # a node's: did its outcomes arrive?
            answer["finished"] = self.nodes.outcomes_heard(envelope[0])
        return answer
