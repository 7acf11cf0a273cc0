"""The broker's side of the client protocol: tasks called by name, and the zerotask.broker.* methods for
clients (docs/protocol.md, section 5). Each handler reads its params, calls the core, and answers through
the outbox; a caller waiting for an outcome is a callback in the core.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.core import BrokerCore
from zerotask.broker.node_protocol import NodeProtocol
from zerotask.broker.params import MAX_TASK_ID, param, read_task_call
from zerotask.broker.placement import read_placement
from zerotask.broker.progress import Progress
from zerotask.broker.replies import DEFERRED, Envelope, Handler, Outbox, Respond, Waiter
from zerotask.broker.security import Security
from zerotask.broker.workflows import Workflows, shown_state
from zerotask.exceptions import InvalidParams, NotReady, QueueFull, TaskTimeout, UnknownMethod, ZerotaskError
from zerotask.loop import Scheduler
from zerotask.store import TaskRecord
from zerotask.task import split_params
from zerotask.wire import FINAL_STATES

DEFAULT_MAX_WAITING = 50_000  # answers one peer may be owed at once (calls, result waits, notify)
MAX_WAITING_TOTAL = 100_000  # answers owed to all peers together: a peer that left still has its waits
MAX_NOTIFY_IDS = 1_000  # task ids in one zerotask.broker.notify
ROUND_IDS = 20_000  # task ids looked up for notify in one round of the loop: a store read each


class ClientProtocol:
    """``max_waiting``: how many answers one peer may be owed at once (a call, a result wait or a
    pushed outcome each): beyond, its requests get QueueFull, so that no peer can make the broker hold
    an unbounded number of waiters (or replies) for it. Fire-and-forget submits are bounded by the
    queue (BrokerCore.max_queued) instead. ``security`` says who sent the request being handled, and
    which tasks it may see (all, without CURVE)."""

    def __init__(
        self,
        core: BrokerCore,
        outbox: Outbox,
        scheduler: Scheduler,
        nodes: NodeProtocol,
        max_waiting: int = DEFAULT_MAX_WAITING,
        security: Security | None = None,
        workflows: Workflows | None = None,
    ) -> None:
        self._core = core
        self._workflows = workflows
        self._security = security or Security()
        self._outbox = outbox
        self._scheduler = scheduler
        self._nodes = nodes
        self.max_waiting = max_waiting
        self._waiting: dict[bytes, int] = {}  # peer routing id -> answers it is owed
        self._waiting_total = 0
        self._settle = self._settled  # one bound method for every waiter, not one each
        self.ids_this_round = 0  # notify lookups in this round of the loop (the transport resets it)
        self.progress: Progress | None = None  # what running tasks report of how far they got

    def methods(self) -> dict[str, Handler]:
        methods: dict[str, Handler] = {
            wire.SUBMIT: self.submit,
            wire.CALL: self.call,
            wire.NOTIFY: self.notify,
            wire.STATUS: self.status,
            wire.RESULT: self.result,
            wire.REVOKE: self.revoke,
            wire.PROGRESS: self.task_progress,
        }
        if self._workflows is not None:
            methods[wire.WORKFLOW] = self.workflow
        return methods

    def by_name(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A request whose method is a task name: queue the task, answer with its outcome."""
        if request.method.startswith(wire.CONTROL_PREFIX):  # a misspelled control method is not a task name
            raise UnknownMethod("Method not found", {"method": request.method})
        args, kwargs = split_params(request.params)
        if respond is not None:
            self._room(envelope)
        record = self._core.submit(request.method, args, kwargs, owner=self._security.owner)
        if respond is None:
            return None
        self._wait(envelope, record, Waiter(request.id, respond))
        return DEFERRED

    def submit(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Queue a task; with ``notify`` its outcome is pushed to the caller when it ends. Sent as a
        notification with notify and a task_id, even a refusal (bad params, unknown method) is pushed."""
        # (Every task passes here: the common case, a bool by name, is read without param()'s generality.)
        notify = request.params.get("notify", False) if isinstance(request.params, dict) else None
        if type(notify) is not bool:
            notify = param(request.params, "notify", 4, bool, False)
        try:
            if notify:
                self._room(envelope)
            record = self._submit(request.params)
        except ZerotaskError as error:
            task_id = request.params.get("task_id") if isinstance(request.params, dict) else None
            if respond is not None or not notify or not isinstance(task_id, str):
                raise
            refusal = {"task_id": task_id, "error": error.to_error_object()}
            self._outbox.send(envelope, jsonrpc.notification(wire.CLIENT_FINISHED, refusal))
            return None
        if notify:
            # Under the id the caller named, which is the one it waits for: a unique task's twin has another.
            asked = request.params.get("task_id") if isinstance(request.params, dict) else None
            self._notify_when_done(record, envelope, asked if isinstance(asked, str) else None)
        return record.id

    def workflow(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Start a workflow (zerotask.canvas); answers with its id, once stored. With ``notify`` its outcome
        is pushed to the caller when it ends, as a task's."""
        assert self._workflows is not None
        definition = param(request.params, "workflow", 0, dict)
        workflow_id: str | None = param(request.params, "workflow_id", 1, str, None)
        notify = param(request.params, "notify", 2, bool, False)
        if workflow_id is not None and not 0 < len(workflow_id) <= MAX_TASK_ID:
            raise InvalidParams(f"workflow_id must have 1 to {MAX_TASK_ID} characters")
        if notify:
            self._room(envelope)
        created = self._workflows.create(definition, workflow_id or uuid.uuid4().hex, self._security.owner)
        record = self._security.reusable(created)
        if notify:
            self._notify_when_done(record, envelope)
        return record.id

    def call(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        if respond is not None:
            self._room(envelope)
        record = self._submit(request.params)
        if respond is not None:
            self._wait(envelope, record, Waiter(request.id, respond))
        return DEFERRED

    def notify(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Ask for zerotask.client.finished notifications for tasks submitted earlier (after a reconnect)."""
        task_ids = param(request.params, "task_ids", 0, list)
        if len(task_ids) > MAX_NOTIFY_IDS:
            raise InvalidParams(f"at most {MAX_NOTIFY_IDS} task ids per notify")
        self.ids_this_round += len(task_ids)
        if self.ids_this_round > ROUND_IDS:  # one message of many notifies must not hold up the loop
            raise QueueFull("too many task ids to look up at once; ask again", {"limit": ROUND_IDS, "bound": "round"})
        unknown = []
        for task_id in dict.fromkeys(task_id for task_id in task_ids if isinstance(task_id, str)):  # each once
            record = self._core.store.get(task_id)
            if record is None or not self._security.may_see(record):
                unknown.append(task_id)
            else:
                self._room(envelope)
                self._notify_when_done(record, envelope)
        return {"unknown": unknown}

    def status(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        record = self._find(param(request.params, "task_id", 0, str))
        return shown_state(record, self._core.state(record))

    def result(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        record = self._find(param(request.params, "task_id", 0, str))
        wait = param(request.params, "wait", 1, bool, True)
        timeout_s: float | None = param(request.params, "timeout_s", 2, (int, float), None)
        if record.state not in FINAL_STATES and not wait:
            state = shown_state(record, self._core.state(record))
            raise NotReady(f"task {record.id} is {state}", {"task_id": record.id, "state": state})
        if respond is not None:
            self._room(envelope)
            self._wait(envelope, record, Waiter(request.id, respond), timeout_s)
        return DEFERRED

    def task_progress(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """The latest progress the task reported (``{"done", "total", "info"}``), or None; UnknownTask."""
        record = self._find(param(request.params, "task_id", 0, str))
        return self.progress.get(record.id) if self.progress is not None else None

    def revoke(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """A queued task never runs; a running one is stopped (its node kills the worker). The task ends
        REVOKED, which the store keeps like any outcome. Returns the task's state afterwards."""
        task_id = param(request.params, "task_id", 0, str)
        self._find(task_id)
        state, holder = self._core.revoke(task_id)
        if holder is not None:
            self._nodes.revoke(holder, [task_id])
        return state

    def _submit(self, params: jsonrpc.Params) -> TaskRecord:
        """Queue the task the params of submit or call describe; the task with its id if it has one and
        the sender may reuse it (Forbidden otherwise)."""
        call, placement = read_task_call(params), read_placement(params)
        if self._security.keyring is None:  # open: no owners, every task is anyone's
            return self._core.submit(*call, placement)
        return self._security.reusable(self._core.submit(*call, placement, owner=self._security.owner))

    def _find(self, task_id: str) -> TaskRecord:
        """The task, if the sender may see it; UnknownTask otherwise, as for an id the broker does not know."""
        return self._security.visible(self._core.find(task_id))

    # ---- waiting ---------------------------------------------------------------------------------

    def _notify_when_done(self, record: TaskRecord, envelope: Envelope, as_id: str | None = None) -> None:
        """Push the task's outcome to this peer as a zerotask.client.finished notification (for ``as_id``,
        when the peer knows the task by another id)."""
        send = functools.partial(self._outbox.send, envelope)
        self._wait(envelope, record, Waiter(None, send, notify_task_id=as_id or record.id))

    def _room(self, envelope: Envelope) -> None:
        """Raise QueueFull if the peer is owed ``max_waiting`` answers already, or all peers together
        MAX_WAITING_TOTAL (ZeroMQ does not tell when a peer goes away, so its waits stay until they end)."""
        if self._waiting.get(envelope[0], 0) >= self.max_waiting:
            limit = self.max_waiting
            raise QueueFull(f"this peer waits for {limit} answers already", {"limit": limit, "bound": "waiting"})
        if self._waiting_total >= MAX_WAITING_TOTAL:
            limit = MAX_WAITING_TOTAL
            raise QueueFull(f"the broker owes {limit} answers already", {"limit": limit, "bound": "waiting"})

    def _wait(self, envelope: Envelope, record: TaskRecord, waiter: Waiter, timeout_s: float | None = None) -> None:
        identity = envelope[0]
        self._waiting[identity] = self._waiting.get(identity, 0) + 1
        self._waiting_total += 1
        waiter.identity, waiter.settled = identity, self._settle
        waiter.token = self._core.wait(record, waiter)
        if waiter.token is not None and timeout_s is not None:
            waiter.timer = self._scheduler.call_later(timeout_s, functools.partial(self._timed_out, identity, record.id, waiter))

    def _timed_out(self, identity: bytes, task_id: str, waiter: Waiter) -> None:
        assert waiter.token is not None
        self._core.cancel_wait(task_id, waiter.token)
        self._settled(identity)
        waiter.timer = None
        waiter.answer_error(TaskTimeout(f"task {task_id} has no result yet"))

    def _settled(self, identity: bytes) -> None:
        self._waiting_total -= 1
        left = self._waiting[identity] - 1
        if left:
            self._waiting[identity] = left
        else:
            del self._waiting[identity]
