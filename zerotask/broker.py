"""Broker: queues tasks from clients, hands them to nodes, and answers with their results.

The broker owns two sockets: a ROUTER for requests (clients and nodes alike, every message JSON-RPC
2.0) and an XPUB that announces task events. A request whose method is a task name is queued as a
task and answered when a node has run it; ``zerotask.broker.*`` methods are the control path.

Nothing leaves the broker before the store has committed what it says: replies and messages to nodes
are collected while a round of incoming messages is handled, the store is flushed once, then
everything is sent. That is how many tasks share one commit.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from zerotask import jsonrpc
from zerotask.dispatcher import Dispatcher, default_dispatcher, split_params
from zerotask.exceptions import InvalidParams, UnknownMethod, UnknownTask, ZerotaskError
from zerotask.nodes import NodeMethods, NodeRegistry
from zerotask.params import param, read_task_call
from zerotask.peers import Envelope, Reply, Respond, Waiter, coalesce, split_frames
from zerotask.server import Server
from zerotask.store import FAILED, FINAL_STATES, FINISHED, QUEUED, REVOKED, Store, TaskRecord, open_store

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://*:5555"
DEFAULT_PUBLISH = "tcp://*:5556"
DEFAULT_STORE = "./zerotask.db"
DEFERRED: Any = object()  # a handler's return value meaning "the response will be sent later"
# Requests (batch items count one each) handled per round before the store is flushed and replies go
# out: big enough to share a commit among many tasks, small enough that nodes keep getting work while a
# client floods us with submits.
_ROUND_BUDGET = 1000

Handler = Callable[[jsonrpc.Request, Envelope, Respond | None], Any]


class Broker(Server, NodeMethods):
    """``Broker().start()`` serves on tcp://*:5555 (requests) and tcp://*:5556 (events), storing tasks in
    ./zerotask.db. ``store`` is a Store or a spec for :func:`zerotask.store.open_store`. Outcomes are kept
    ``result_ttl_s`` seconds (a day; None keeps them for ever), as Celery's result_expires."""

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        publish: str = DEFAULT_PUBLISH,
        store: Store | str = DEFAULT_STORE,
        dispatcher: Dispatcher | None = None,
        heartbeat_s: float = 1.0,
        liveness: int = 3,
        max_message_bytes: int = 16 * 1024 * 1024,
        result_ttl_s: float | None = 86400.0,
    ) -> None:
        super().__init__()
        self.bind_endpoint = bind
        self.publish_endpoint = publish
        self._store_spec = store
        self.dispatcher = dispatcher or default_dispatcher
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self.result_ttl_s = result_ttl_s
        self._methods: dict[str, Handler] = {
            "zerotask.broker.submit": self._submit_method,
            "zerotask.broker.call": self._call_method,
            "zerotask.broker.notify": self._notify_method,
            "zerotask.broker.status": self._status_method,
            "zerotask.broker.result": self._result_method,
            "zerotask.broker.info": self._info_method,
            "zerotask.broker.ping": self._ping_method,
            "zerotask.broker.revoke": self._revoke_method,
            "zerotask.broker.connect": self._connect_method,
            "zerotask.broker.request": self._request_method,
            "zerotask.broker.running": self._running_method,
            "zerotask.broker.finished": self._finished_method,
            "zerotask.broker.failed": self._finished_method,
            "zerotask.broker.heartbeat": self._heartbeat_method,
            "zerotask.broker.release": self._release_method,
            "zerotask.broker.disconnect": self._disconnect_method,
        }

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        assert self.context is not None
        self.store = self._store_spec if isinstance(self._store_spec, Store) else open_store(self._store_spec)
        requeued = self.store.requeue_unfinished()
        self.nodes = NodeRegistry(self.store)
        self.instance = uuid.uuid4().hex  # clients compare it to learn that the broker restarted
        self._waiters: dict[str, list[Waiter]] = {}
        self._outbox: dict[Envelope, list[dict[str, Any] | list[Any]]] = {}
        self._events_out: list[bytes] = []
        self._subscriptions: set[bytes] = set()
        self.requests = self.context.socket(zmq.ROUTER)
        # Without ROUTER_MANDATORY a reply to a vanished peer is dropped silently; with it we learn of it.
        self.requests.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.requests.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.requests.setsockopt(zmq.SNDHWM, 0)  # replies are never dropped: flow control is by credit
        self.requests.setsockopt(zmq.RCVHWM, 0)
        self.requests.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        self.requests.setsockopt(zmq.LINGER, 0)
        self.requests.bind(self.bind_endpoint)
        self.events = self.context.socket(zmq.XPUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(self.publish_endpoint)
        self.add_socket(self.requests, self._on_requests)
        self.add_socket(self.events, self._on_subscription)
        self.call_every(self.heartbeat_s, self._heartbeat)
        if self.result_ttl_s:
            self.call_every(min(60.0, max(self.result_ttl_s / 10, 0.1)), self._expire)
        log.info(
            "broker on %s, events on %s, %d task(s) queued",
            self.requests.getsockopt_string(zmq.LAST_ENDPOINT),
            self.events.getsockopt_string(zmq.LAST_ENDPOINT),
            requeued,
        )

    def teardown(self) -> None:
        self.store.close()
        log.info("broker stopped")

    # ---- the loop --------------------------------------------------------------------------------

    def _on_requests(self) -> None:
        budget = _ROUND_BUDGET
        while budget > 0:
            try:
                frames = self.requests.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            budget -= self._on_message(frames)

    def after_events(self) -> None:
        for node, records in self.nodes.assign():
            self._send(node.envelope, jsonrpc.notification("zerotask.node.run", {"tasks": [r.to_wire() for r in records]}))
            node.last_sent = time.monotonic()
        self.store.flush()
        events, self._events_out = self._events_out, []
        for event in events:
            self.events.send(event, zmq.NOBLOCK)
        outbox, self._outbox = self._outbox, {}
        for envelope, messages in outbox.items():
            try:
                for payload in coalesce(messages):
                    self.requests.send_multipart([*envelope, payload], zmq.NOBLOCK)
            except zmq.ZMQError as error:  # the peer is gone (EHOSTUNREACH); its own problem
                log.debug("dropping a message to a vanished peer: %s", error)
                self._node_lost(envelope[0], "unreachable")

    def _send(self, envelope: Envelope, message: dict[str, Any] | list[Any]) -> None:
        """Queue a message for the peer; it leaves after the next store flush."""
        self._outbox.setdefault(envelope, []).append(message)

    def _on_message(self, frames: list[bytes]) -> int:
        """Handle one incoming message; returns how many requests it held."""
        envelope, payload = split_frames(frames)
        node = self.nodes.get(envelope[0])
        if node is not None:
            node.last_seen = time.monotonic()
        if payload is None:
            # The message stays the specification's; what was wrong goes in data.
            error = jsonrpc.error_object(jsonrpc.INVALID_REQUEST, data="expected one frame after the envelope")
            self._send(envelope, jsonrpc.error(None, error))
            return 1
        try:
            # Nested deeper than MAX_DEPTH, what a client sends could not be sent on to a node; what a node
            # sends fits in our replies, since the node could encode it.
            message = jsonrpc.loads(payload, max_depth=None if node is not None else jsonrpc.MAX_DEPTH)
        except jsonrpc.InvalidMessage as problem:
            self._send(envelope, jsonrpc.error(None, jsonrpc.error_object(problem.code)))
            return 1
        if isinstance(message, list):
            if not message:
                self._send(envelope, jsonrpc.error(None, jsonrpc.error_object(jsonrpc.INVALID_REQUEST)))
                return 1
            reply = Reply(envelope, self._send, is_batch=True)
            for item in message:
                self._on_item(item, envelope, reply)
            reply.seal()
            return len(message)
        else:
            self._on_item(message, envelope, Reply(envelope, self._send, is_batch=False))
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
            value = self._handle(request, envelope, respond)
        except ZerotaskError as error:
            value, failure = None, error.to_error_object()
        except Exception as error:  # a bug here must not take the broker down with it
            log.exception("internal error handling %s", request.method)
            value, failure = None, jsonrpc.error_object(jsonrpc.INTERNAL_ERROR, f"Internal error: {error}")
        if respond is None or value is DEFERRED:
            return
        respond(jsonrpc.error(request.id, failure) if failure else jsonrpc.result(request.id, value))

    def _handle(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        handler = self._methods.get(request.method)
        if handler is not None:
            return handler(request, envelope, respond)
        if request.method.startswith("zerotask."):  # a misspelled control method is not a task name
            raise UnknownMethod("Method not found", {"method": request.method})
        args, kwargs = split_params(request.params)
        record = self.submit(request.method, args, kwargs)
        if respond is None:
            return None
        self._wait_for(record, Waiter(request.id, respond))
        return DEFERRED

    # ---- tasks -----------------------------------------------------------------------------------

    def submit(
        self,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        task_id: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> TaskRecord:
        """Queue a task (or find the one with this id). Raises UnknownMethod when nodes are connected and
        none serves ``method``; with no node connected the task waits for one."""
        if not method:
            raise InvalidParams("the method name is empty")
        record = TaskRecord(task_id or uuid.uuid4().hex, method, args, kwargs, options=options or {})
        if method.startswith("broker.") and method in self.dispatcher:
            return self._run_here(record) if self.store.add(record) else self._existing(record)
        if self.nodes and not self.nodes.serves(method):
            if task_id is not None and (existing := self.store.get(task_id)) is not None:
                return existing
            # The message is the specification's own, so any JSON-RPC client recognises it; the name is in data.
            raise UnknownMethod(jsonrpc.ERROR_MESSAGES[jsonrpc.METHOD_NOT_FOUND], {"method": method})
        if not self.store.add(record):  # a task id we know: a client asking again, not a new task
            return self._existing(record)
        self.nodes.queued[method] += 1
        self._publish("zerotask.event.queued", {"task_id": record.id, "method": method})
        return record

    def _existing(self, record: TaskRecord) -> TaskRecord:
        existing = self.store.get(record.id)
        assert existing is not None, "the store refused to add a task it does not have"
        return existing

    def _expire(self) -> None:
        """Forget outcomes older than result_ttl_s (a bounded number per call, so the loop stays quick)."""
        assert self.result_ttl_s
        expired = self.store.expire(time.time() - self.result_ttl_s)
        if expired:
            log.info("forgot %d task outcome(s) older than %.0f s", expired, self.result_ttl_s)

    def _run_here(self, record: TaskRecord) -> TaskRecord:
        """A custom broker method (``@task(name="broker.x")`` in the broker's process) runs at once, in
        the broker's loop: keep such methods quick."""
        record.result, record.error = self.dispatcher.run(record.method, record.args, record.kwargs)
        record.state = FAILED if record.error is not None else FINISHED
        self.store.finish(record.id, record.state, record.result, record.error)
        return record

    def _wait_for(self, record: TaskRecord, waiter: Waiter, timeout_s: float | None = None) -> None:
        if record.state in FINAL_STATES:
            waiter.answer_outcome(record.result, record.error)
            return
        self._waiters.setdefault(record.id, []).append(waiter)
        if timeout_s is not None:
            waiter.timer = self.call_later(timeout_s, lambda: self._wait_timed_out(record.id, waiter))

    def _wait_timed_out(self, task_id: str, waiter: Waiter) -> None:
        from zerotask.exceptions import TaskTimeout

        waiting = self._waiters.get(task_id, [])
        if waiter in waiting:
            waiting.remove(waiter)
        waiter.timer = None
        waiter.answer_error(TaskTimeout(f"task {task_id} has no result yet"))

    def _finish(
        self, task_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None, unfinished: bool = False
    ) -> None:
        """Record a task's outcome, unless it has one already, and answer everyone waiting for it.
        ``unfinished``: the caller knows the task has no outcome yet (a node held it)."""
        if unfinished:
            self.store.finish_unfinished(task_id, state, result, error)
        elif not self.store.finish(task_id, state, result, error):
            return
        for waiter in self._waiters.pop(task_id, []):
            waiter.answer_outcome(result, error)
        self._publish(f"zerotask.event.{state.lower()}", {"task_id": task_id, "state": state})

    def _requeue(self, records: list[TaskRecord]) -> None:
        for record in records:
            self.store.set_state(record.id, QUEUED)
            self.nodes.queued[record.method] += 1

    def _publish(self, method: str, params: dict[str, Any]) -> None:
        """Announce an event on the PUB socket once the store has committed it."""
        if self._subscriptions:  # nobody listening: skip the encoding entirely
            self._events_out.append(jsonrpc.dumps(jsonrpc.notification(method, params)))

    def _on_subscription(self) -> None:
        while True:
            try:
                message = self.events.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscriptions.discard(message[1:])

    # ---- zerotask.broker.* for clients -------------------------------------------------------------

    def _submit_params(self, request: jsonrpc.Request) -> TaskRecord:
        return self.submit(*read_task_call(request.params))

    def _submit_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Queue a task; with ``notify`` its outcome is pushed to the caller when it ends. Sent as a
        notification with notify and a task_id, even a refusal (bad params, unknown method) is pushed."""
        notify = param(request.params, "notify", 4, bool, False)
        try:
            record = self._submit_params(request)
        except ZerotaskError as error:
            task_id = request.params.get("task_id") if isinstance(request.params, dict) else None
            if respond is not None or not notify or not isinstance(task_id, str):
                raise
            refusal = {"task_id": task_id, "error": error.to_error_object()}
            self._send(envelope, jsonrpc.notification("zerotask.client.finished", refusal))
            return None
        if notify:
            self._notify_when_done(record, envelope)
        return record.id

    def _notify_when_done(self, record: TaskRecord, envelope: Envelope) -> None:
        """Push the task's outcome to this peer as a zerotask.client.finished notification."""
        self._wait_for(record, Waiter(None, lambda message: self._send(envelope, message), notify_task_id=record.id))

    def _notify_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Ask for zerotask.client.finished notifications for tasks submitted earlier (after a reconnect)."""
        task_ids = param(request.params, "task_ids", 0, list)
        unknown = []
        for task_id in task_ids:
            record = self.store.get(task_id) if isinstance(task_id, str) else None
            if record is None:
                unknown.append(task_id)
            else:
                self._notify_when_done(record, envelope)
        return {"unknown": unknown}

    def _call_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        record = self._submit_params(request)
        if respond is not None:
            self._wait_for(record, Waiter(request.id, respond))
        return DEFERRED

    def _record(self, request: jsonrpc.Request) -> TaskRecord:
        task_id = param(request.params, "task_id", 0, str)
        holder = self.nodes.holder(task_id)
        if holder is not None:  # in a node's hands: its state (ASSIGNED or RUNNING) is known here
            return holder.tasks[task_id]
        record = self.store.get(task_id)
        if record is None:
            raise UnknownTask(f"unknown task id {task_id!r}", {"task_id": task_id})
        return record

    def _status_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        return self._record(request).state

    def _result_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        from zerotask.exceptions import NotReady

        record = self._record(request)
        wait = param(request.params, "wait", 1, bool, True)
        timeout_s: float | None = param(request.params, "timeout_s", 2, (int, float), None)
        if record.state not in FINAL_STATES and not wait:
            raise NotReady(f"task {record.id} is {record.state}", {"task_id": record.id, "state": record.state})
        if respond is not None:
            self._wait_for(record, Waiter(request.id, respond), timeout_s)
        return DEFERRED

    def _info_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        from zerotask import __version__

        return {
            "version": __version__,
            "publish": self.events.getsockopt_string(zmq.LAST_ENDPOINT),
            "nodes": [node.describe() for node in self.nodes],
            "queued": {method: count for method, count in self.nodes.queued.items() if count > 0},
            "heartbeat_s": self.heartbeat_s,
            "liveness": self.liveness,
            "instance": self.instance,
        }

    def _ping_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        return {"instance": self.instance}

    def _revoke_method(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A queued task never runs; a running one is stopped (its node kills the worker). The task ends
        REVOKED, which the store keeps like any outcome. Returns the task's state afterwards."""
        from zerotask.exceptions import TaskRevoked

        record = self._record(request)
        if record.state in FINAL_STATES:
            return record.state
        was_queued = record.state == QUEUED
        holder = self.nodes.holder(record.id)
        self._finish(
            record.id, REVOKED, error=TaskRevoked(f"task {record.id} was revoked", {"task_id": record.id}).to_error_object()
        )
        if was_queued:
            self.nodes.queued[record.method] -= 1
        if holder is not None:
            self.nodes.release(record.id)
            self._send(holder.envelope, jsonrpc.notification("zerotask.node.revoke", {"task_ids": [record.id]}))
        return REVOKED


def main(argv: list[str] | None = None) -> None:
    from zerotask.cli import broker_main

    broker_main(argv)


if __name__ == "__main__":
    main()
