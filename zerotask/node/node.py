"""Node: connects to a broker, keeps its worker processes busy, and reports what they did.

A node exposes no socket. It connects a DEALER to the broker's request socket, announces the task
names it serves, and grants the broker one unit of credit per free worker (plus ``prefetch``); the
broker sends tasks only against that credit. Everything the node has to say in one round (tasks
started, outcomes, tasks handed back, new credit) goes to the broker as one JSON-RPC batch.

The node also keeps its promises when things go wrong: a worker that dies or runs past its time limit
is replaced and its task reported; a broker that falls silent is reconnected to with backoff (given
several brokers, the node moves to the next one: :mod:`zerotask.failover`), and outcomes it may not
have received are sent again (:mod:`zerotask.node.delivery`); SIGTERM hands back what has not started
and lets running tasks finish within a grace period.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from zerotask import auth, failover, jsonrpc, sockets, wire
from zerotask.describe import descriptions
from zerotask.loop import EventLoop, Silence
from zerotask.node.base import ENVELOPE_ROOM
from zerotask.node.delivery import Deliveries, split_outcomes
from zerotask.node.metrics import NodeMetrics
from zerotask.node.pools import make_pool
from zerotask.task import Dispatcher, PoolKind, default_dispatcher
from zerotask.wire import QUEUE_NAME

log = logging.getLogger(__name__)

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_LIVENESS = 3
DEFAULT_GRACE_S = 30.0
ROUND_TRIP_S = 0.001  # about one node -> broker -> node exchange here; what adaptive prefetch covers
MAX_PREFETCH_PER_WORKER = 256  # short tasks: fewer, larger messages (64 cost the node a fifth more CPU per task)
MAX_RUNNING_LISTED = 10_000  # task ids a connect may list as running: the broker's bound (docs/protocol.md, 1.5)


class Node(EventLoop):
    """``Node().start()`` serves every registered task with one worker per CPU, via the local broker.

    ``prefetch``: tasks held beyond one per worker. None (the default) adapts it: the node holds as
    many extra tasks as its workers finish in about one round trip to the broker (see ROUND_TRIP_S),
    so short tasks stream without a pause while long ones (a millisecond or more) are held only by
    free workers and spread fairly over nodes. ``grace_s``: how long SIGTERM waits for running tasks.
    ``time_limit_s``: a default limit for tasks that set none. ``curve_secret`` (this node's secret
    certificate) and ``broker_key`` (the broker's public one), by default from ZEROTASK_CURVE_SECRET and
    ZEROTASK_BROKER_KEY, connect with CURVE; the broker must list this node's key with its nodes.
    ``metrics`` (``HOST:PORT``) serves Prometheus metrics there (:mod:`zerotask.node.metrics`); an
    address beyond this machine needs ``insecure``. ``pool``: "process" (worker processes: isolation,
    hard time limits) or "thread" (threads of this process: I/O-bound tasks, the lowest latency), see
    :mod:`zerotask.node.pools`; ``concurrency``: async tasks each worker runs at once. ``queues``: the named
    queues it takes tasks from (the default queue if None). ``max_tasks_per_worker`` and
    ``max_memory_per_worker_mb`` replace a worker process between two tasks once it ran that many or grew
    past that RSS (as Celery's ``--max-tasks-per-child`` and ``--max-memory-per-child``).

    ``broker`` may name several brokers (``"tcp://a:5555,tcp://b:5555"``, or a list; ValueError for a
    bad one): the node uses one at a time, starting at a random one so that nodes given the same list
    spread over the brokers, and moves to the next when its connection drops or it falls silent.
    """

    def __init__(
        self,
        broker: str | Sequence[str] = DEFAULT_BROKER,
        workers: int | None = None,
        dispatcher: Dispatcher | None = None,
        name: str | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        liveness: int = DEFAULT_LIVENESS,
        prefetch: int | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        time_limit_s: float | None = None,
        curve_secret: str | None = None,
        broker_key: str | None = None,
        metrics: str | None = None,
        insecure: bool = False,
        queues: list[str] | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker_mb: float | None = None,
        pool: PoolKind = "process",
        concurrency: int = 1,
    ) -> None:
        super().__init__()
        if queues is not None and not (queues and all(QUEUE_NAME.fullmatch(queue) for queue in queues)):
            raise ValueError("queues must be 1 or more names of 1 to 64 letters, digits, '_', '.', ':' or '-'")
        self.queues = queues  # None: the default queue
        # Prometheus on HOST:PORT (zerotask.node.metrics); beyond this machine only if ``insecure``.
        self.metrics = NodeMetrics(metrics, insecure) if metrics else None
        self.brokers = failover.Brokers(broker, spread=True, backoff_s=heartbeat_s)
        self.curve = auth.peer_keys(curve_secret, broker_key)  # None: plaintext
        self.dispatcher = dispatcher or default_dispatcher
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.identity = f"node-{uuid.uuid4().hex}".encode()
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.prefetch = prefetch
        self.grace_s = grace_s
        count = workers or os.cpu_count() or 1
        self.pool = make_pool(pool, self, self.dispatcher, count, self._outcomes_append, time_limit_s, concurrency)
        if (max_tasks_per_worker is not None and max_tasks_per_worker < 1) or (max_memory_per_worker_mb or 1) <= 0:
            raise ValueError("max_tasks_per_worker and max_memory_per_worker_mb must be above 0")
        if max_tasks_per_worker is not None or max_memory_per_worker_mb is not None:
            memory = int(max_memory_per_worker_mb * 1024 * 1024) if max_memory_per_worker_mb is not None else None
            self.pool.recycle(max_tasks_per_worker, memory)
        self._outcomes: list[dict[str, Any]] = []
        self._released: list[str] = []
        self._credit_out = 0  # credit granted to the broker and not yet used by it
        self._draining = False
        self._announce_drain = False
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # with several brokers: tells when the connection drops
        self._deliveries = Deliveries()  # outcomes sent, not yet known to have arrived
        self._last_sent = 0.0
        self._silence = Silence(heartbeat_s, liveness)
        self._answered = False  # whether the broker ever said anything: if not, the hint is about keys
        self._connects = 0
        self._sent_messages = 0
        self._heard_since_connect = False

    @property
    def broker_endpoint(self) -> str:
        """The endpoint of the broker the node uses now."""
        return self.brokers.current

    @property
    def worker_count(self) -> int:
        """Tasks the node runs at once: what it asks the broker for, before the prefetch."""
        return self.pool.slots

    def _outcomes_append(self, outcome: dict[str, Any]) -> None:
        self._outcomes.append(outcome)
        if self.metrics is not None:
            self.metrics.count(outcome)

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        self.pool.start()
        if self.metrics is not None:
            self.metrics.start(self.pool)
        self._connect()
        self.call_every(self.heartbeat_s, self._heartbeat)
        if self.brokers.several:  # with somewhere to go, notice a silence within a quarter heartbeat
            self.call_every(self.heartbeat_s / 4, self._check_silence)

    def teardown(self) -> None:
        if self._socket is not None:
            # The broker puts back in the queue whatever we still hold. Never block on the goodbye: with
            # no broker there, a DEALER's send would wait for ever.
            try:
                self._socket.send(jsonrpc.dumps(jsonrpc.notification(wire.DISCONNECT, {})), zmq.NOBLOCK)
            except zmq.Again:
                pass
            sockets.close_watched(self._socket, self._monitor, linger_ms=500)  # give the goodbye a moment to leave
            self._socket = self._monitor = None
        self.pool.stop()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("node %s stopped (a task took %.6f s on average lately)", self.name, self.pool.service_s)

    def _connect(self) -> None:
        """(Re)connect to the broker (the current one, of several) and announce ourselves, with the
        tasks our workers hold and those whose outcome it may not have (sent again after the connect),
        so that the broker keeps them ours. Tasks waiting here are dropped: a broker that forgot us has
        queued them again."""
        assert self.context is not None
        if self._socket is not None:
            self.remove_socket(self._socket)
            if self._monitor is not None and self.brokers.several:
                self.remove_socket(self._monitor)
            sockets.close_watched(self._socket, self._monitor)
        self._socket, self._monitor = self.brokers.connect(
            self.context, routing_id=self.identity, curve=self.curve, watch_alone=True
        )
        self._socket.setsockopt(zmq.SNDHWM, 0)  # what the node says is bounded by its credit and workers
        self._send_frame = sockets.sender(self._socket)
        self.add_socket(self._socket, self._on_broker)
        if self._monitor is not None and self.brokers.several:  # (one broker's: read at each heartbeat)
            self.add_socket(self._monitor, self._on_monitor)
        self.pool.take_pending()
        self._released.clear()
        self._connects += 1
        self._credit_out = self._credit_wanted()
        self._outcomes[:0] = self._deliveries.unconfirmed()
        running = dict.fromkeys([*self.pool.running_ids(), *(outcome["task_id"] for outcome in self._outcomes)])
        methods = self.dispatcher.names()
        params = {
            "node": self.name,
            "methods": methods,
            "workers": self.worker_count,
            "credit": self._credit_out,
            "running": list(running)[:MAX_RUNNING_LISTED],
            "descriptions": descriptions(self.dispatcher, methods),  # for rpc.discover; bounded to 1 MiB
            "defaults": self._task_defaults(methods),
        }
        if self.queues is not None:
            params["queues"] = self.queues
        self._send(jsonrpc.request(wire.CONNECT, params, f"connect-{self._connects}"))
        self._sent_messages = 0  # since the connect: each heartbeat says how many (the broker compares)
        self._heard_since_connect = False
        self._silence.last_heard = time.monotonic()
        log.info("node %s connecting to %s with %d task name(s)", self.name, self.broker_endpoint, len(methods))

    def _task_defaults(self, methods: list[str]) -> dict[str, dict[str, Any]]:
        """The queue, priority and schedule of the tasks that set them (``@task(queue=..., priority=...,
        every=..., cron=...)``): the broker places tasks whose callers say nothing, and runs periodic ones."""
        defaults = {}
        for method in methods:
            found = self.dispatcher.get(method)
            if found is None:
                continue
            given = found.options
            options: dict[str, Any] = {"queue": given.queue, "priority": given.priority, "rate_limit": given.rate_limit}
            options.update(every=given.every_s, cron=given.cron, unique_for=given.unique_for_s)
            if any(value is not None for value in options.values()):
                defaults[method] = {key: value for key, value in options.items() if value is not None}
        return defaults

    def _credit_wanted(self) -> int:
        """How many more tasks to ask for: room for one task per worker plus the prefetch, less what
        we hold and what the broker may already be sending."""
        if self._draining:
            return 0
        if self.prefetch is not None:
            extra = self.prefetch
        else:
            extra = self.worker_count * min(MAX_PREFETCH_PER_WORKER, int(ROUND_TRIP_S / self.pool.service_s))
        in_hand = self.pool.held + self._credit_out
        # Ask again only once half the prefetch is used up: fewer, larger messages both ways.
        if in_hand > self.worker_count + extra // 2:
            return 0
        return max(0, self.worker_count + extra - in_hand)

    # ---- messages from the broker ------------------------------------------------------------------

    def _on_broker(self) -> None:
        broker = self._socket
        while broker is not None:
            try:
                payload = sockets.recv_frame(broker, sockets.NOBLOCK)
            except zmq.Again:
                return
            self._silence.heard()
            self.brokers.heard()
            self._answered = self._heard_since_connect = True
            for item in jsonrpc.items(payload):
                self._on_broker_item(item)
            # A reconnect made while handling the message registered a new socket: the loop polls that one.
            if broker is not self._socket or not sockets.waiting(broker):
                return

    def _on_monitor(self) -> None:
        """The connection dropped. ZeroMQ would make it again by itself, but what was in flight either way is
        gone (tasks sent to us, credit we asked for, outcomes): connect again, which sets both sides straight,
        to the next broker of several; to this one if it had answered on it (else a broker that refuses us,
        or is not there, would make us reconnect in a loop: silence covers those)."""
        if self._monitor is not None and failover.gone(self._monitor):
            if self.brokers.lost("its connection dropped") or self._heard_since_connect:
                self._connect()

    def _on_broker_item(self, item: dict[str, Any]) -> None:
        if jsonrpc.is_response(item):
            if Deliveries.is_ping(item.get("id")):
                if not self._deliveries.answered(item["id"], item.get("result")):
                    log.warning("the broker did not get every outcome sent to it: connecting again to report them again")
                    self._connect()
                return
            if item.get("error"):
                log.error("the broker refused us: %s", item["error"])
            elif isinstance(item.get("result"), dict):
                self._adopt(item["result"])
            return
        method = item.get("method")
        params = item.get("params") or {}
        if method == wire.NODE_RUN:
            tasks = params.get("tasks", [])
            self._credit_out = max(0, self._credit_out - len(tasks))
            if self._draining:
                self._released.extend(task["task_id"] for task in tasks)
            else:
                self.pool.add(tasks)
        elif method == wire.NODE_REVOKE:
            self.pool.revoke(set(params.get("task_ids", [])))
        elif method == wire.NODE_RECONNECT:
            self._connect()

    def _adopt(self, settings: dict[str, Any]) -> None:
        """Take the broker's answer to connect: heartbeat at least as often as it expects, and never
        send a message larger than it accepts."""
        heartbeat_s = settings.get("heartbeat_s")
        if isinstance(heartbeat_s, int | float) and 0 < heartbeat_s < self.heartbeat_s:
            self.heartbeat_s = float(heartbeat_s)
            self.call_every(self.heartbeat_s, self._heartbeat)
            self._silence.base_s = self.heartbeat_s * self.liveness
        limit = settings.get("max_message_bytes")
        if isinstance(limit, int) and limit > 2 * ENVELOPE_ROOM:
            self.pool.max_outcome_bytes = limit - ENVELOPE_ROOM

    # ---- stopping --------------------------------------------------------------------------------

    def on_stop_signal(self, signum: int) -> None:
        """SIGTERM / Ctrl-C: take no more tasks, hand back those not started, let the running ones
        finish for up to ``grace_s`` seconds, then stop. (A second signal exits at once.)"""
        if self._draining:
            return
        self._draining = True
        self._announce_drain = True
        self._released.extend(self.pool.take_pending())
        running = self.pool.running_ids()
        log.info("node %s stopping: %d task(s) handed back, waiting for %d", self.name, len(self._released), len(running))
        if not running:
            self.stop()
        else:
            self.call_later(self.grace_s, self._grace_over)

    def _grace_over(self) -> None:
        log.warning("grace period over: stopping %d task(s); the broker will queue them again", len(self.pool.running_ids()))
        self.pool.kill_busy()
        self.stop()

    # ---- messages to the broker ------------------------------------------------------------------

    def after_events(self) -> None:
        self.pool.collect()  # what ended during this round is reported in it
        if self._socket is None:
            return
        if self._draining:
            # Tasks batched behind the running one have not started: hand them back too.
            self._released.extend(self.pool.take_pending())
            if not self.pool.busy:
                self.stop()
        batch = []
        running = self.pool.due_running()
        if running:
            batch.append(jsonrpc.notification(wire.RUNNING_TASKS, {"task_ids": running}))
        progress = self.pool.take_progress()
        if progress:
            batch.append(jsonrpc.notification(wire.REPORT_PROGRESS, {"tasks": progress}))
        if self._outcomes:
            batch.append(jsonrpc.notification(wire.FINISHED_TASKS, {"tasks": self._outcomes}))
            self._deliveries.sent(self._outcomes)
            self._outcomes = []
        if self._released or self._announce_drain:
            batch.append(jsonrpc.notification(wire.RELEASE, {"task_ids": self._released, "draining": self._draining}))
            self._released = []
            self._announce_drain = False
        credit = self._credit_wanted()
        if credit:
            self._credit_out += credit
            batch.append(jsonrpc.notification(wire.REQUEST, {"credit": credit}))
        if batch:
            payload = jsonrpc.dumps(batch[0] if len(batch) == 1 else batch)
            if len(payload) <= self.pool.max_outcome_bytes:
                self._send_bytes(payload)
            else:  # over the broker's limit, which would disconnect us: one message per outcome
                for message in split_outcomes(batch):
                    self._send(message)

    def _send(self, message: dict[str, Any] | list[Any]) -> None:
        self._send_bytes(jsonrpc.dumps(message))

    def _send_bytes(self, payload: bytes) -> None:
        assert self._socket is not None
        try:
            self._send_frame(payload, sockets.NOBLOCK)
        except zmq.Again:  # no connection: a refused CURVE handshake leaves none (libzmq does not retry it)
            log.debug("no connection to the broker: a message dropped; the heartbeat reconnects")
        self._last_sent = time.monotonic()
        self._sent_messages += 1

    def _heartbeat(self) -> None:
        if not self.brokers.several:  # polled with the socket, its monitor would cost every round ~2,000 instructions
            self._on_monitor()
        self._check_silence()  # after a connect, nothing below is due
        due = time.monotonic() - self._last_sent >= self.heartbeat_s
        ping = self._deliveries.ping()
        if ping is not None:  # its answer confirms the outcomes sent before it (zerotask.node.delivery)
            self._send(jsonrpc.request(wire.PING, ping[1], ping[0]))
        if due:
            self._send(jsonrpc.notification(wire.HEARTBEAT, {"sent": self._sent_messages}))

    def _check_silence(self) -> None:
        """If the broker has been silent too long, connect again (to the next broker, of several)."""
        silent_s = self._silence.silent_s()
        if self._silence.overdue():
            if not self.brokers.lost(f"silent for {silent_s:.1f} s"):
                hint = "" if self._answered else " (never answered: is it running? If it requires CURVE, check the node's keys)"
                log.warning("broker silent for %.1f s: reconnecting%s", silent_s, hint)
            self._connect()
