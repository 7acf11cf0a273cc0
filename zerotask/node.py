"""Node: connects to a broker, keeps its worker processes busy, and reports what they did.

A node exposes no socket. It connects a DEALER to the broker's request socket, announces the task
names it serves, and grants the broker one unit of credit per free worker; the broker sends tasks
only against that credit. Everything the node has to say in one round (tasks started, outcomes, new
credit) goes to the broker as one JSON-RPC batch.
"""

from __future__ import annotations

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
from zerotask.server import Server
from zerotask.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_BROKER = "tcp://127.0.0.1:5555"


class Node(Server):
    """``Node().start()`` serves every registered task with one worker per CPU, via the local broker."""

    def __init__(
        self,
        broker: str = DEFAULT_BROKER,
        workers: int | None = None,
        dispatcher: Dispatcher | None = None,
        name: str | None = None,
        heartbeat_s: float = 1.0,
        liveness: int = 3,
    ) -> None:
        super().__init__()
        self.broker_endpoint = broker
        self.worker_count = workers or os.cpu_count() or 1
        self.dispatcher = dispatcher or default_dispatcher
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.identity = f"node-{uuid.uuid4().hex}".encode()
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.workers: list[Worker] = []
        self._pending: deque[dict[str, Any]] = deque()
        self._started: list[str] = []
        self._outcomes: list[dict[str, Any]] = []
        self._credit = 0
        self._socket: zmq.Socket[bytes] | None = None
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._connects = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        self.workers = [self._start_worker(index) for index in range(self.worker_count)]
        self._connect()
        self.call_every(self.heartbeat_s, self._heartbeat)

    def teardown(self) -> None:
        if self._socket is not None:
            self._send(jsonrpc.notification("zerotask.broker.disconnect", {}))
            self._socket.close(linger=500)  # give the goodbye a moment to leave
            self._socket = None
        for worker in self.workers:
            self.remove_socket(worker.fileno())
            worker.stop()
        self.workers = []
        log.info("node %s stopped", self.name)

    def _start_worker(self, index: int) -> Worker:
        worker = Worker(self.dispatcher, index)
        self.add_socket(worker.fileno(), lambda: self._on_worker(worker))
        return worker

    def _connect(self) -> None:
        """(Re)connect to the broker and announce ourselves; tasks not yet started are dropped,
        since the broker puts back in the queue whatever a node it forgot was holding."""
        assert self.context is not None
        if self._socket is not None:
            self.remove_socket(self._socket)
            self._socket.close(linger=0)
        self._socket = self.context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, self.identity)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.broker_endpoint)
        self.add_socket(self._socket, self._on_broker)
        self._pending.clear()
        self._started.clear()
        self._credit = 0
        self._connects += 1
        idle = sum(1 for worker in self.workers if worker.idle)
        methods = {name: found.options.to_wire() for name in self.dispatcher.names() if (found := self.dispatcher.get(name))}
        params = {"node": self.name, "methods": methods, "workers": len(self.workers), "credit": idle}
        self._send(jsonrpc.request("zerotask.broker.connect", params, f"connect-{self._connects}"))
        self._last_heard = time.monotonic()
        log.info("node %s connecting to %s with %d task name(s)", self.name, self.broker_endpoint, len(methods))

    # ---- messages from the broker ------------------------------------------------------------------

    def _on_broker(self) -> None:
        assert self._socket is not None
        while True:
            try:
                payload = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                message = jsonrpc.loads(payload)
            except jsonrpc.InvalidMessage:
                log.warning("ignoring a message from the broker that is not JSON")
                continue
            for item in message if isinstance(message, list) else [message]:
                self._on_broker_item(item)

    def _on_broker_item(self, item: Any) -> None:
        if jsonrpc.is_response(item):
            if item.get("error"):
                log.error("the broker refused us: %s", item["error"])
            return
        if not isinstance(item, dict):
            return
        method = item.get("method")
        params = item.get("params") or {}
        if method == "zerotask.node.run":
            self._pending.extend(params.get("tasks", []))
            self._dispatch()
        elif method == "zerotask.node.reconnect":
            self._connect()

    # ---- workers ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self._pending:
                return
            if worker.idle:
                task = self._pending.popleft()
                worker.run(task)
                self._started.append(task["task_id"])

    def _on_worker(self, worker: Worker) -> None:
        task = worker.task
        outcome = worker.receive()
        if outcome is None:
            self._replace(worker, task)
            return
        self._outcomes.append(outcome)
        self._credit += 1
        self._dispatch()

    def _replace(self, worker: Worker, task: dict[str, Any] | None) -> None:
        """A worker died: report its task failed, and start another in its place."""
        worker.process.join(1.0)
        code = worker.process.exitcode
        self.remove_socket(worker.fileno())
        worker.stop()
        log.error("worker %d died (exit code %s)", worker.index, code)
        if task is not None:
            message = f"the worker running {task['method']} died (exit code {code})"
            error = jsonrpc.error_object(
                jsonrpc.TASK_FAILED, f"WorkerLost: {message}", {"type": "WorkerLost", "message": message, "traceback": ""}
            )
            self._outcomes.append({"task_id": task["task_id"], "error": error})
            self._credit += 1
        self.workers[worker.index] = self._start_worker(worker.index)
        self._dispatch()

    # ---- messages to the broker ------------------------------------------------------------------

    def after_events(self) -> None:
        batch = []
        if self._started:
            batch.append(jsonrpc.notification("zerotask.broker.running", {"task_ids": self._started}))
            self._started = []
        if self._outcomes:
            batch.append(jsonrpc.notification("zerotask.broker.finished", {"tasks": self._outcomes}))
            self._outcomes = []
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
        if now - self._last_heard > self.heartbeat_s * self.liveness:
            log.warning("broker silent for %.1f s: reconnecting", now - self._last_heard)
            self._connect()
        elif now - self._last_sent >= self.heartbeat_s:
            self._send(jsonrpc.notification("zerotask.broker.heartbeat", {}))


def main(argv: list[str] | None = None) -> None:
    from zerotask.cli import node_main

    node_main(argv)


if __name__ == "__main__":
    main()
