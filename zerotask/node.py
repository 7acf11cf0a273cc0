"""Node: connects to a broker, keeps its worker processes busy, and reports what they did.

A node exposes no socket. It connects a DEALER to the broker's request socket, announces the task
names it serves, and grants the broker one unit of credit per free worker (plus ``prefetch``); the
broker sends tasks only against that credit. Everything the node has to say in one round (tasks
started, outcomes, tasks handed back, new credit) goes to the broker as one JSON-RPC batch.

The node also keeps its promises when things go wrong: a worker that dies or runs past its time limit
is replaced and its task reported; a broker that falls silent is reconnected to with backoff; SIGTERM
hands back what has not started and lets running tasks finish within a grace period.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections import deque
from typing import Any

import zmq

from zerotask import jsonrpc
from zerotask.dispatcher import Dispatcher, default_dispatcher
from zerotask.exceptions import ResultTooLarge, TimeLimitExceeded, WorkerLost, ZerotaskError, task_error_object
from zerotask.server import Server, Timer
from zerotask.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
MAX_RECONNECT_S = 32.0
_ENVELOPE_ROOM = 4096  # bytes kept free for the JSON-RPC around an outcome


class Node(Server):
    """``Node().start()`` serves every registered task with one worker per CPU, via the local broker.

    ``prefetch``: tasks held beyond one per worker (faster hand-off, less fair). ``grace_s``: how long
    SIGTERM waits for running tasks. ``time_limit_s``: a default limit for tasks that set none.
    """

    def __init__(
        self,
        broker: str = DEFAULT_BROKER,
        workers: int | None = None,
        dispatcher: Dispatcher | None = None,
        name: str | None = None,
        heartbeat_s: float = 1.0,
        liveness: int = 3,
        prefetch: int = 0,
        grace_s: float = 30.0,
        time_limit_s: float | None = None,
    ) -> None:
        super().__init__()
        self.broker_endpoint = broker
        self.worker_count = workers or os.cpu_count() or 1
        self.dispatcher = dispatcher or default_dispatcher
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.identity = f"node-{uuid.uuid4().hex}".encode()
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.prefetch = max(prefetch, 0)
        self.grace_s = grace_s
        self.time_limit_s = time_limit_s
        self.workers: list[Worker] = []
        self._pending: deque[dict[str, Any]] = deque()
        self._started: list[str] = []
        self._outcomes: list[dict[str, Any]] = []
        self._released: list[str] = []
        self._credit = 0
        self._limits: dict[int, Timer] = {}  # worker index -> its running task's time limit
        self._draining = False
        self._announce_drain = False
        self._socket: zmq.Socket[bytes] | None = None
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._silence_limit_s = heartbeat_s * liveness
        self._connects = 0
        self._max_message_bytes = 16 * 1024 * 1024  # until the broker tells us its own limit

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        for index in range(self.worker_count):
            self.workers.append(self._start_worker(index))
        self._connect()
        self.call_every(self.heartbeat_s, self._heartbeat)

    def teardown(self) -> None:
        if self._socket is not None:
            # The broker puts back in the queue whatever we still hold.
            self._send(jsonrpc.notification("zerotask.broker.disconnect", {}))
            self._socket.close(linger=500)  # give the goodbye a moment to leave
            self._socket = None
        for worker in self.workers:
            if not worker.connection.closed:
                self.remove_socket(worker.fileno())
            worker.stop()
        self.workers = []
        log.info("node %s stopped", self.name)

    def _start_worker(self, index: int) -> Worker:
        siblings = [other.connection for other in self.workers if other.index != index]
        worker = Worker(self.dispatcher, index, siblings)
        self.add_socket(worker.fileno(), lambda: self._on_worker(worker))
        return worker

    def _connect(self) -> None:
        """(Re)connect to the broker and announce ourselves, with the tasks our workers are running so
        the broker keeps them ours. Tasks not yet started are dropped: a broker that forgot us has
        queued them again."""
        assert self.context is not None
        if self._socket is not None:
            self.remove_socket(self._socket)
            self._socket.close(linger=0)
        self._socket = self.context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, self.identity)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.connect(self.broker_endpoint)
        self.add_socket(self._socket, self._on_broker)
        self._pending.clear()
        self._started.clear()
        self._released.clear()
        self._credit = 0
        self._connects += 1
        running = [worker.task["task_id"] for worker in self.workers if worker.task is not None]
        credit = 0 if self._draining else self.worker_count - len(running) + self.prefetch
        methods = {name: found.options.to_wire() for name in self.dispatcher.names() if (found := self.dispatcher.get(name))}
        params = {"node": self.name, "methods": methods, "workers": self.worker_count, "credit": credit, "running": running}
        self._send(jsonrpc.request("zerotask.broker.connect", params, f"connect-{self._connects}"))
        self._last_heard = time.monotonic()
        log.info("node %s connecting to %s with %d task name(s)", self.name, self.broker_endpoint, len(methods))

    # ---- messages from the broker ------------------------------------------------------------------

    def _on_broker(self) -> None:
        assert self._socket is not None
        while self._socket is not None:
            try:
                payload = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            self._silence_limit_s = self.heartbeat_s * self.liveness
            try:
                message = jsonrpc.loads(payload)
            except jsonrpc.InvalidMessage:
                log.warning("ignoring a message from the broker that is not JSON")
                continue
            for item in message if isinstance(message, list) else [message]:
                if isinstance(item, dict):
                    self._on_broker_item(item)

    def _on_broker_item(self, item: dict[str, Any]) -> None:
        if jsonrpc.is_response(item):
            if item.get("error"):
                log.error("the broker refused us: %s", item["error"])
            elif isinstance(item.get("result"), dict):
                self._adopt(item["result"])
            return
        method = item.get("method")
        params = item.get("params") or {}
        if method == "zerotask.node.run":
            tasks = params.get("tasks", [])
            if self._draining:
                self._released.extend(task["task_id"] for task in tasks)
            else:
                self._pending.extend(tasks)
                self._dispatch()
        elif method == "zerotask.node.revoke":
            self._revoke(set(params.get("task_ids", [])))
        elif method == "zerotask.node.reconnect":
            self._connect()

    def _adopt(self, settings: dict[str, Any]) -> None:
        """Take the broker's answer to connect: heartbeat at least as often as it expects, and never
        send a message larger than it accepts."""
        heartbeat_s = settings.get("heartbeat_s")
        if isinstance(heartbeat_s, int | float) and 0 < heartbeat_s < self.heartbeat_s:
            self.heartbeat_s = float(heartbeat_s)
            self.call_every(self.heartbeat_s, self._heartbeat)
        limit = settings.get("max_message_bytes")
        if isinstance(limit, int) and limit > _ENVELOPE_ROOM:
            self._max_message_bytes = limit

    def _revoke(self, task_ids: set[str]) -> None:
        kept = deque(task for task in self._pending if task["task_id"] not in task_ids)
        if not self._draining:
            self._credit += len(self._pending) - len(kept)
        self._pending = kept
        for worker in self.workers:
            if worker.task is not None and worker.task["task_id"] in task_ids:
                log.info("revoking task %s: killing worker %d", worker.task["task_id"], worker.index)
                worker.kill("revoked")

    # ---- workers ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self._pending:
                return
            if worker.idle and worker.kill_reason is None:
                task = self._pending.popleft()
                worker.run(task)
                self._started.append(task["task_id"])
                limit = self._time_limit(task)
                if limit is not None:
                    self._limits[worker.index] = self.call_later(limit, functools.partial(self._time_up, worker, task))

    def _time_limit(self, task: dict[str, Any]) -> float | None:
        limit = task.get("time_limit_s")
        if isinstance(limit, int | float) and limit > 0:
            return float(limit)
        found = self.dispatcher.get(task.get("method", ""))
        if found is not None and found.options.timeout_s is not None:
            return found.options.timeout_s
        return self.time_limit_s

    def _time_up(self, worker: Worker, task: dict[str, Any]) -> None:
        if worker.task is task:
            log.warning("task %s (%s) ran past its time limit: killing worker %d", task["task_id"], task["method"], worker.index)
            worker.kill("timeout")

    def _on_worker(self, worker: Worker) -> None:
        task = worker.task
        received = worker.receive()
        timer = self._limits.pop(worker.index, None)
        if timer is not None:
            timer.cancel()
        if received is None:
            self._replace(worker, task)
        else:
            outcome, size = received
            if size > self._max_message_bytes - _ENVELOPE_ROOM and task is not None:
                # The broker would disconnect us for sending it, and the caller would wait forever.
                limit = self._max_message_bytes
                self._report_failure(
                    task, ResultTooLarge(f"the outcome of {task['method']} is {size} bytes; the broker takes {limit}")
                )
            else:
                self._outcomes.append(outcome)
            self._free_one()
        self._dispatch()
        if self._draining and all(w.idle for w in self.workers):
            self.stop()

    def _free_one(self) -> None:
        if not self._draining:
            self._credit += 1

    def _replace(self, worker: Worker, task: dict[str, Any] | None) -> None:
        """A worker died: report its task (unless we killed it on purpose), start another in its place."""
        worker.process.join(1.0)
        code = worker.process.exitcode
        reason = worker.kill_reason
        self.remove_socket(worker.fileno())
        worker.stop()
        worker.task = None
        if task is not None:
            if reason == "timeout":
                limit = self._time_limit(task)
                self._report_failure(task, TimeLimitExceeded(f"{task['method']} ran past its time limit of {limit} s"))
            elif reason is None:
                log.error("worker %d died running %s (exit code %s)", worker.index, task["method"], code)
                self._report_failure(task, WorkerLost(f"the worker running {task['method']} died (exit code {code})"))
            self._free_one()
        if reason != "shutdown":
            self.workers[worker.index] = self._start_worker(worker.index)

    def _report_failure(self, task: dict[str, Any], error: ZerotaskError) -> None:
        failure = task_error_object(error, "")
        failure["data"]["type"] = type(error).__name__
        failure["message"] = f"{type(error).__name__}: {error}"
        found = self.dispatcher.get(task["method"])
        failure["data"]["retryable"] = found is not None and found.options.retryable(error)
        self._outcomes.append({"task_id": task["task_id"], "error": failure})

    # ---- stopping --------------------------------------------------------------------------------

    def on_stop_signal(self, signum: int) -> None:
        """SIGTERM / Ctrl-C: take no more tasks, hand back those not started, let the running ones
        finish for up to ``grace_s`` seconds, then stop. (A second signal exits at once.)"""
        if self._draining:
            return
        self._draining = True
        self._announce_drain = True
        self._released.extend(task["task_id"] for task in self._pending)
        self._pending.clear()
        self._credit = 0
        busy = [worker for worker in self.workers if not worker.idle]
        log.info("node %s stopping: %d task(s) handed back, waiting for %d running", self.name, len(self._released), len(busy))
        if not busy:
            self.stop()
        else:
            self.call_later(self.grace_s, self._grace_over)

    def _grace_over(self) -> None:
        for worker in self.workers:
            if not worker.idle:
                log.warning(
                    "grace period over: stopping %s; the broker will queue it again", worker.task and worker.task["method"]
                )
                worker.kill("shutdown")
        self.stop()

    # ---- messages to the broker ------------------------------------------------------------------

    def after_events(self) -> None:
        if self._socket is None:
            return
        batch = []
        if self._started:
            batch.append(jsonrpc.notification("zerotask.broker.running", {"task_ids": self._started}))
            self._started = []
        if self._outcomes:
            batch.append(jsonrpc.notification("zerotask.broker.finished", {"tasks": self._outcomes}))
            self._outcomes = []
        if self._released or self._announce_drain:
            batch.append(
                jsonrpc.notification("zerotask.broker.release", {"task_ids": self._released, "draining": self._draining})
            )
            self._released = []
            self._announce_drain = False
        if self._credit:
            batch.append(jsonrpc.notification("zerotask.broker.request", {"credit": self._credit}))
            self._credit = 0
        if batch:
            self._send(batch[0] if len(batch) == 1 else batch)

    def _send(self, message: dict[str, Any] | list[Any]) -> None:
        assert self._socket is not None
        self._socket.send(jsonrpc.dumps(message))
        self._last_sent = time.monotonic()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heard > self._silence_limit_s:
            log.warning("broker silent for %.1f s: reconnecting", now - self._last_heard)
            self._silence_limit_s = min(self._silence_limit_s * 2, MAX_RECONNECT_S)  # back off while it stays away
            self._connect()
        elif now - self._last_sent >= self.heartbeat_s:
            self._send(jsonrpc.notification("zerotask.broker.heartbeat", {}))


def main(argv: list[str] | None = None) -> None:
    from zerotask.cli import node_main

    node_main(argv)


if __name__ == "__main__":
    main()
