"""Workflows: the broker's side of :mod:`zerotask.canvas`, a hook on the core.

A workflow is a task record of its own in the store: its id the workflow's, method ``zerotask.workflow``,
its definition as the one argument, SCHEDULED with a ``due_at`` no clock reaches (WAITING_FOREVER), so no
node ever takes it. Callers wait on it as on any task; the broker records the workflow's outcome on it.

Its members are ordinary tasks with ids made from the workflow's and their place in it (``<id>.0``,
``<id>.1.3``, ``<id>.2.cb``; :mod:`zerotask.broker.workflow_plan`), carrying ``options["workflow"]``. When one
ends, :meth:`Workflows.after_finish` works out what is now due (the plan's pure functions, reading the
members' outcomes from the store) and queues it, or ends the workflow. Queueing a member twice does
nothing (the store keeps one task per id), so working a step out twice is harmless: every step happens
once. With SQLite a member's outcome and what it makes due commit together; for a store that writes an
outcome at once (Redis), a broker that starts looks at every unfinished workflow again (:meth:`resume_all`).

The broker never polls: only a member's end, a broker's start, or a retry after the queue was full or the
store unreachable makes it look at a workflow.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.assignment import NodeId
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Hooks
from zerotask.broker.placement import Placement
from zerotask.broker.workflow_plan import Ended, Launch, Lookup, Plan, Plans, Step, Task, advance, parse, resume, start
from zerotask.exceptions import InvalidParams, QueueFull, StoreUnavailable, UnknownMethod, ZerotaskError
from zerotask.loop import Scheduler
from zerotask.store import Outcome, TaskRecord
from zerotask.wire import FAILED, FINAL_STATES, FINISHED, RUNNING, SCHEDULED, WORKFLOW_TASK

log = logging.getLogger("zerotask.broker")

WAITING_FOREVER = 1e18  # the due_at of a workflow's record: never due (the DueTimer does not even arm for it)
RESUME_SLICE = 100  # unfinished workflows looked at per round of the loop when the broker starts
RETRY_S = 1.0  # a member that could not be queued (the queue full, the store unreachable) is tried again after this
ROUND_TASKS = 100_000  # tasks queued in one round of the loop beyond which workflows wait for the next round
_ROOM = 4096  # bytes of a message left for what wraps a task's arguments

RevokeHeld = Callable[[NodeId, list[str]], None]


def shown_state(record: TaskRecord, state: str) -> str:
    """The state callers see: a workflow's record waits SCHEDULED while the workflow runs."""
    return RUNNING if state == SCHEDULED and record.method == WORKFLOW_TASK else state


def workflow_error(message: str) -> dict[str, Any]:
    """A workflow's own failure, as a task's error (TaskError of type WorkflowError in Python)."""
    return jsonrpc.error_object(wire.TASK_FAILED, f"WorkflowError: {message}", {"type": "WorkflowError", "message": message})


class MemberTaken(Exception):
    """A member's task id is another task's (not of its name and owner): the workflow cannot use it."""


class Workflows(Hooks):
    """Install it among the core's hooks, then :meth:`attach` the core. ``max_message_bytes``: a member
    whose arguments (its own and the results handed to it) would not fit in a message fails the workflow."""

    def __init__(self, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_message_bytes = max_message_bytes
        self._core: BrokerCore | None = None
        self._scheduler: Scheduler | None = None
        self._revoke_held: RevokeHeld = lambda node, task_ids: None
        self._plans = Plans()
        self._work: collections.deque[tuple[str, str, Ended]] = collections.deque()  # (workflow id, member key, outcome)
        self._queued_work: set[tuple[str, str]] = set()
        self._working = False
        self._retrying: set[str] = set()
        self._resume_before = math.inf
        self._resume_seen: set[str] = set()
        self._resumed = 0

    def attach(self, core: BrokerCore, scheduler: Scheduler, revoke_held: RevokeHeld | None = None) -> None:
        """Work through ``core``; ``revoke_held(node, task_ids)`` tells a node to stop members it holds."""
        self._core, self._scheduler = core, scheduler
        if revoke_held is not None:
            self._revoke_held = revoke_held

    @property
    def core(self) -> BrokerCore:
        assert self._core is not None, "Workflows.attach(core) first"
        return self._core

    # ---- starting a workflow -----------------------------------------------------------------------

    def create(self, definition: Any, workflow_id: str, owner: str | None) -> TaskRecord:
        """Store a workflow and queue its first members; returns its record, or the task that has the id
        already. Raises InvalidParams for a bad definition, UnknownMethod for a task name no node serves
        (when nodes are connected), QueueFull, StoreUnavailable."""
        if "." in workflow_id:  # or one workflow's members could have another's ids ("a" + ".0.1", "a.0" + ".1")
            raise InvalidParams("a workflow id has no '.': its members' ids are the workflow's, a '.' and their path")
        plan = parse(definition, owner)
        core = self.core
        if core.writes.down:
            raise StoreUnavailable("the broker cannot reach its store now: nothing was queued; try again")
        existing = core.store.get(workflow_id)
        if existing is not None:
            return existing
        self._check_methods(plan)
        first = start(plan.root, ())
        waiting = sum(core.store.queued_counts().values()) + core.store.state_counts().get(SCHEDULED, 0)
        if waiting + len(first) >= core.max_queued:
            raise QueueFull(f"the queue is full ({core.max_queued} tasks)", {"limit": core.max_queued, "bound": "queue"})
        if core.writes.added and core.writes.added + len(first) > ROUND_TASKS:  # one message must not stall the loop
            raise QueueFull("too many tasks queued at once; ask again", {"limit": ROUND_TASKS, "bound": "round"})
        record = TaskRecord(workflow_id, WORKFLOW_TASK, [plan.definition], {}, owner=owner)
        record.due_at = WAITING_FOREVER
        if not core.store.add(record, core.size_hint):
            return core.store.get(workflow_id) or record
        core.writes.added += 1  # its acknowledgement waits for the store's flush, as a task's
        core.enqueued(record)
        self._plans.remember(workflow_id, plan)
        self._work_on(functools.partial(self._apply, workflow_id, plan, Step(first)))
        if workflow_id not in self._plans:  # it ended already (broker tasks, a refusal): the record says how
            return core.store.get(workflow_id) or record
        return record

    def _check_methods(self, plan: Plan) -> None:
        """UnknownMethod, as for a task, when nodes are connected and none serves a member's name (and none
        did lately); broker tasks (``broker.*``) are the core's to find."""
        nodes = list(self.core.nodes)
        if not nodes:
            return
        known = self.core.store.known_methods()
        for method in plan.methods:
            if method.startswith(wire.BROKER_TASK_PREFIX) or method in known:
                continue
            if not any(method in node.methods for node in nodes):
                raise UnknownMethod(jsonrpc.ERROR_MESSAGES[jsonrpc.METHOD_NOT_FOUND], {"method": method})

    # ---- hooks -------------------------------------------------------------------------------------

    def before_enqueue(self, record: TaskRecord) -> None:
        if record.method == WORKFLOW_TASK:  # only create() makes these, without the core's submit
            raise InvalidParams(f"{WORKFLOW_TASK} is reserved: start a workflow with {wire.WORKFLOW}")

    def after_enqueue(self, record: TaskRecord) -> None:
        if record.method == WORKFLOW_TASK and record.state != SCHEDULED:
            # An operator queued a failed workflow again (zerotask.broker.retry): that cannot run it again.
            error = workflow_error("a workflow cannot be retried: start it again, under a new id")
            self.core.end([(record, Outcome(record.id, FAILED, error=error))])

    def after_finish(self, record: TaskRecord) -> None:
        if record.method == WORKFLOW_TASK:
            plan = self._plans.forget(record.id)
            if record.state != FINISHED:
                self._work_on(functools.partial(self._revoke_members, record, plan))
            return
        ref = record.options.get("workflow") if record.options else None
        if isinstance(ref, dict) and isinstance(ref.get("id"), str) and isinstance(ref.get("path"), str):
            ended = _ended(record)
            if ended is not None:
                self._work_on(functools.partial(self._queue_work, ref["id"], ref["path"], ended))

    # ---- a broker that starts ----------------------------------------------------------------------

    def resume_all(self) -> None:
        """Look again at every unfinished workflow, RESUME_SLICE per round of the loop (newest first), and
        queue what is due: what a broker that died between recording an outcome and queueing what it made
        due left undone."""
        self._resume_before, self._resume_seen, self._resumed = math.inf, set(), 0
        try:
            scheduled = self.core.store.state_counts().get(SCHEDULED)  # a store with none is not listed at all
        except StoreUnavailable:
            return  # the next look (a shared store's come every _RESUME_WORKFLOWS_S) finds them
        if scheduled:
            self._later(0.0, self._resume_slice)

    def _resume_slice(self) -> None:
        before = None if self._resume_before == math.inf else self._resume_before
        try:
            records = self.core.store.list_tasks(SCHEDULED, WORKFLOW_TASK, RESUME_SLICE, before)
        except StoreUnavailable:
            self._later(RETRY_S, self._resume_slice)
            return
        fresh = [record for record in records if record.id not in self._resume_seen]
        for record in fresh:
            self._work_on(functools.partial(self._resume, record.id, record))
        self._resumed += len(fresh)
        if len(records) < RESUME_SLICE or not fresh:
            if self._resumed:
                log.info("looked again at %d unfinished workflow(s)", self._resumed)
            return
        # The next slice: older ones, and those of the same time as the oldest here not seen yet.
        oldest = min(record.created_at or 0.0 for record in records)
        self._resume_seen = {record.id for record in records if (record.created_at or 0.0) == oldest}
        self._resume_before = math.nextafter(oldest, math.inf)
        self._later(0.0, self._resume_slice)

    def _resume(self, workflow_id: str, record: TaskRecord | None = None) -> None:
        self._retrying.discard(workflow_id)
        try:
            plan = self._plan(workflow_id, record)
        except StoreUnavailable:
            self._retry(workflow_id)
            return
        if plan is not None:
            self._step(workflow_id, plan, lambda lookup: resume(plan, lookup))

    # ---- inside ------------------------------------------------------------------------------------

    def _work_on(self, work: Callable[[], None]) -> None:
        """Do ``work``, then every member's end it (or what it leads to) queued, in order: a loop, not a
        recursion, however long a chain of tasks that end at once (broker tasks). A bug in one piece of work
        is logged and does not stop the rest, nor the core that called the hook."""
        if self._working:
            work()
            return
        self._working = True
        try:
            _guarded(work)
            while self._work:
                workflow_id, key, ended = self._work.popleft()
                self._queued_work.discard((workflow_id, key))
                _guarded(functools.partial(self._member_ended, workflow_id, key, ended))
        finally:
            self._working = False

    def _queue_work(self, workflow_id: str, key: str, ended: Ended) -> None:
        if (workflow_id, key) not in self._queued_work:
            self._queued_work.add((workflow_id, key))
            self._work.append((workflow_id, key, ended))

    def _member_ended(self, workflow_id: str, key: str, ended: Ended) -> None:
        try:
            plan = self._plan(workflow_id)
        except StoreUnavailable:
            self._retry(workflow_id)  # then from scratch: what this end made due is found again
            return
        task = plan.tasks.get(key) if plan is not None else None
        if plan is not None and task is not None:
            self._step(workflow_id, plan, lambda lookup: advance(plan, task, ended, lookup))

    def _step(self, workflow_id: str, plan: Plan, decide: Callable[[Lookup], Step]) -> None:
        try:
            step = decide(self._lookup(workflow_id, plan))
        except MemberTaken as taken:
            step = Step([], Ended(False, workflow_error(str(taken))))
        except StoreUnavailable:
            self._retry(workflow_id)
            return
        self._apply(workflow_id, plan, step)

    def _apply(self, workflow_id: str, plan: Plan, step: Step) -> None:
        if step.outcome is not None:
            self._end(workflow_id, step.outcome)
            return
        for launch in step.launch:
            failure = self._launch(workflow_id, plan, launch)
            if failure is not None:
                self._end(workflow_id, failure)
                return
            if workflow_id in self._retrying:
                return  # the queue is full, or the store unreachable: the rest later, with it

    def _launch(self, workflow_id: str, plan: Plan, launch: Launch) -> Ended | None:
        """Queue one member; returns the workflow's failure if it cannot be (a full queue or an unreachable
        store is not one: the workflow is looked at again later)."""
        task, member_id = launch.task, f"{workflow_id}.{launch.task.key}"
        if launch.args and len(jsonrpc.dumps(launch.args)) > self.max_message_bytes - _ROOM:
            return Ended(False, workflow_error(f"the arguments of {member_id} ({task.method}) would not fit in a message"))
        options: dict[str, Any] = {"workflow": {"id": workflow_id, "path": task.key}}
        if task.time_limit_s is not None:
            options["time_limit_s"] = task.time_limit_s
        placement = Placement(task.queue, task.priority) if task.queue is not None or task.priority is not None else None
        try:
            record = self.core.submit(task.method, launch.args, dict(task.kwargs), member_id, options, placement, plan.owner)
        except (QueueFull, StoreUnavailable):
            self._retry(workflow_id)
            return None
        except ZerotaskError as error:
            return Ended(False, error.to_error_object())
        if record.id != member_id:  # @task(unique_for=...): the call's twin runs, under its own id
            return Ended(False, workflow_error(f"{member_id} ({task.method}) is unique, and its twin {record.id} runs"))
        if record.method != task.method or record.owner != plan.owner:
            return Ended(False, workflow_error(f"the task id {member_id} is another task's ({record.method})"))
        ended = _ended(record)
        if ended is not None:  # it had ended before (queued again by a broker that looks again): go on from it
            self._queue_work(workflow_id, task.key, ended)
        return None

    def _end(self, workflow_id: str, ended: Ended) -> None:
        try:
            record = self.core.store.get(workflow_id)
            if record is None or record.state in FINAL_STATES:
                return
            if ended.ok:
                outcome = Outcome(workflow_id, FINISHED, result=ended.value)
            else:
                outcome = Outcome(workflow_id, FAILED, error=ended.value)
            self.core.end([(record, outcome)])
        except StoreUnavailable:
            self._retry(workflow_id)

    def _revoke_members(self, record: TaskRecord, plan: Plan | None) -> None:
        """The workflow failed or was revoked: its members that have not ended never run, or are stopped."""
        if plan is None:
            try:
                plan = parse(record.args[0] if record.args else None, record.owner)
            except InvalidParams:
                return
        store = self.core.store
        for task in plan.tasks.values():
            member = store.get(f"{record.id}.{task.key}")
            if member is None or member.state in FINAL_STATES or member.method != task.method or member.owner != record.owner:
                continue
            _, holder = self.core.revoke(member.id)
            if holder is not None:
                self._revoke_held(holder, [member.id])

    def _retry(self, workflow_id: str) -> None:
        if workflow_id not in self._retrying:
            self._retrying.add(workflow_id)
            self._later(RETRY_S, functools.partial(self._work_on, functools.partial(self._resume, workflow_id)))

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        assert self._scheduler is not None, "Workflows.attach(core, scheduler) first"
        self._scheduler.call_later(delay_s, callback)

    # ---- plans -------------------------------------------------------------------------------------

    def _plan(self, workflow_id: str, record: TaskRecord | None = None) -> Plan | None:
        """The plan of a workflow that has not ended, or None. The broker sees every workflow end (its
        hook), so a cached plan says enough; with a store other brokers share, the record says."""
        plan = self._plans.get(workflow_id)
        store = self.core.store
        if plan is not None and not store.shared:
            return plan
        record = record or store.get(workflow_id)
        if record is None:
            return plan  # (a shared store may write a new task only at its flush)
        if record.method != WORKFLOW_TASK or record.state != SCHEDULED:
            self._plans.forget(workflow_id)
            return None
        if plan is None:
            try:
                plan = self._plans.remember(workflow_id, parse(record.args[0] if record.args else None, record.owner))
            except InvalidParams as error:
                self._end(workflow_id, Ended(False, workflow_error(f"its stored definition is not one: {error}")))
        return plan

    def _lookup(self, workflow_id: str, plan: Plan) -> Lookup:
        """A member's outcome from the store (raises MemberTaken for a task of another name or owner)."""
        get = self.core.store.get

        def lookup(task: Task) -> Ended | None:
            record = get(f"{workflow_id}.{task.key}")
            if record is None:
                return None
            if record.method != task.method or record.owner != plan.owner:
                raise MemberTaken(f"the task id {record.id} is another task's ({record.method})")
            return _ended(record)

        return lookup


def _ended(record: TaskRecord) -> Ended | None:
    if record.state == FINISHED:
        return Ended(True, record.result)
    if record.state in FINAL_STATES:
        return Ended(False, record.error or workflow_error(f"task {record.id} ended {record.state}"))
    return None


def _guarded(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:
        log.exception("internal error in a workflow step")
