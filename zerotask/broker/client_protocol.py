"""The broker's side of the client protocol: tasks called by name, and the zerotask.broker.* methods for
clients (docs/protocol.md, section 5). Each handler reads its params, calls the core, and answers through
the outbox; a caller waiting for an outcome is a callback in the core.
"""

from __future__ import annotations

import functools
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.core import BrokerCore
from zerotask.broker.node_protocol import NodeProtocol
from zerotask.broker.params import param, read_task_call
from zerotask.broker.replies import DEFERRED, Envelope, Handler, Outbox, Respond, Waiter
from zerotask.exceptions import NotReady, TaskTimeout, UnknownMethod, ZerotaskError
from zerotask.loop import Scheduler
from zerotask.store import TaskRecord
from zerotask.task import split_params
from zerotask.wire import FINAL_STATES


class ClientProtocol:
    def __init__(self, core: BrokerCore, outbox: Outbox, scheduler: Scheduler, nodes: NodeProtocol) -> None:
        self._core = core
        self._outbox = outbox
        self._scheduler = scheduler
        self._nodes = nodes

    def methods(self) -> dict[str, Handler]:
        return {
            wire.SUBMIT: self.submit,
            wire.CALL: self.call,
            wire.NOTIFY: self.notify,
            wire.STATUS: self.status,
            wire.RESULT: self.result,
            wire.REVOKE: self.revoke,
        }

    def by_name(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A request whose method is a task name: queue the task, answer with its outcome."""
        if request.method.startswith(wire.CONTROL_PREFIX):  # a misspelled control method is not a task name
            raise UnknownMethod("Method not found", {"method": request.method})
        args, kwargs = split_params(request.params)
        record = self._core.submit(request.method, args, kwargs)
        if respond is None:
            return None
        self._wait(record, Waiter(request.id, respond))
        return DEFERRED

    def submit(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Queue a task; with ``notify`` its outcome is pushed to the caller when it ends. Sent as a
        notification with notify and a task_id, even a refusal (bad params, unknown method) is pushed."""
        notify = param(request.params, "notify", 4, bool, False)
        try:
            record = self._core.submit(*read_task_call(request.params))
        except ZerotaskError as error:
            task_id = request.params.get("task_id") if isinstance(request.params, dict) else None
            if respond is not None or not notify or not isinstance(task_id, str):
                raise
            refusal = {"task_id": task_id, "error": error.to_error_object()}
            self._outbox.send(envelope, jsonrpc.notification(wire.CLIENT_FINISHED, refusal))
            return None
        if notify:
            self._notify_when_done(record, envelope)
        return record.id

    def call(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        record = self._core.submit(*read_task_call(request.params))
        if respond is not None:
            self._wait(record, Waiter(request.id, respond))
        return DEFERRED

    def notify(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Ask for zerotask.client.finished notifications for tasks submitted earlier (after a reconnect)."""
        unknown = []
        for task_id in param(request.params, "task_ids", 0, list):
            record = self._core.store.get(task_id) if isinstance(task_id, str) else None
            if record is None:
                unknown.append(task_id)
            else:
                self._notify_when_done(record, envelope)
        return {"unknown": unknown}

    def status(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        return self._core.state(self._core.find(param(request.params, "task_id", 0, str)))

    def result(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        record = self._core.find(param(request.params, "task_id", 0, str))
        wait = param(request.params, "wait", 1, bool, True)
        timeout_s: float | None = param(request.params, "timeout_s", 2, (int, float), None)
        if record.state not in FINAL_STATES and not wait:
            state = self._core.state(record)
            raise NotReady(f"task {record.id} is {state}", {"task_id": record.id, "state": state})
        if respond is not None:
            self._wait(record, Waiter(request.id, respond), timeout_s)
        return DEFERRED

    def revoke(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A queued task never runs; a running one is stopped (its node kills the worker). The task ends
        REVOKED, which the store keeps like any outcome. Returns the task's state afterwards."""
        task_id = param(request.params, "task_id", 0, str)
        state, holder = self._core.revoke(task_id)
        if holder is not None:
            self._nodes.revoke(holder, [task_id])
        return state

    # ---- waiting ---------------------------------------------------------------------------------

    def _notify_when_done(self, record: TaskRecord, envelope: Envelope) -> None:
        """Push the task's outcome to this peer as a zerotask.client.finished notification."""
        self._wait(record, Waiter(None, functools.partial(self._outbox.send, envelope), notify_task_id=record.id))

    def _wait(self, record: TaskRecord, waiter: Waiter, timeout_s: float | None = None) -> None:
        waiter.token = self._core.wait(record, waiter.answer_record)
        if waiter.token is not None and timeout_s is not None:
            waiter.timer = self._scheduler.call_later(timeout_s, functools.partial(self._timed_out, record.id, waiter))

    def _timed_out(self, task_id: str, waiter: Waiter) -> None:
        assert waiter.token is not None
        self._core.cancel_wait(task_id, waiter.token)
        waiter.timer = None
        waiter.answer_error(TaskTimeout(f"task {task_id} has no result yet"))
