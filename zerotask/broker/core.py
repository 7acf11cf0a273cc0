"""BrokerCore: the broker's task logic, with no sockets.

It owns submit, assign, finish, retry, revoke, requeue and result expiry, the nodes' credit and the tasks
they hold, and the callers waiting for outcomes (as callbacks), in plain values that the transport
(:mod:`zerotask.broker.transport`) turns messages into. Features plug in as hooks (:mod:`zerotask.broker.hooks`);
time comes from a scheduler, so tests run the core in-process on a MemoryStore with a manual clock.

One fact, one place: what is queued is the store's (:meth:`Store.queued_counts`); which node holds a task,
and whether it started it (RUNNING), is the core's, in memory only. Several brokers may share one store
(Redis): what ended at another reaches the waiters here through :meth:`BrokerCore.take_changes`.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.ahead import RoundAhead
from zerotask.broker.assignment import Assigner, NodeId, NodeSlot
from zerotask.broker.direct import DirectPath
from zerotask.broker.hooks import Hooks, overriding
from zerotask.broker.outcomes import Retrying, read_report
from zerotask.broker.placement import DueTimer, Placement, TaskDefaults
from zerotask.broker.rate_limits import RateLimits
from zerotask.broker.waiters import OnOutcome, Waiters
from zerotask.broker.writes import StoreWrites
from zerotask.exceptions import InvalidParams, QueueFull, StoreUnavailable, TaskRevoked, UnknownMethod, UnknownTask
from zerotask.loop import Scheduler
from zerotask.store import DEFAULT_QUEUES, NO_ENTRIES, Outcome, Store, TaskRecord
from zerotask.task import Dispatcher
from zerotask.wire import FAILED, FINAL_STATES, FINISHED, REVOKED, RUNNING, SCHEDULED

log = logging.getLogger("zerotask.broker")

MAX_CREDIT = 1_000_000  # tasks a node may be owed at once: credit beyond is ignored (it must stay encodable)
DEFAULT_MAX_QUEUED = 10_000_000  # tasks queued at once, for all names: beyond, submits get QueueFull


class BrokerCore:
    """``BrokerCore(store, scheduler, hooks)``. ``local``: tasks named ``broker.*`` found there run in
    the broker itself, at submit. Outcomes are forgotten ``result_ttl_s`` after they are recorded. At
    most ``max_queued`` tasks wait in the queue: beyond, a submit is refused with QueueFull
    (backpressure) instead of growing the broker without end."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        hooks: Sequence[Hooks] = (),
        local: Dispatcher | None = None,
        result_ttl_s: float | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.store = store
        self.result_ttl_s = result_ttl_s
        self.max_queued = max_queued
        # Bytes per request of the message being handled (set by the transport): a new task's size, for a
        # store that bounds its memory, without encoding the task again to measure it.
        self.size_hint = 0
        self._scheduler = scheduler
        self._local = local
        self._nodes: dict[NodeId, NodeSlot] = {}
        self._slots: list[NodeSlot] = []  # the nodes, as a list for the direct path to take turns in
        self._served: Counter[str] = Counter()  # task name -> how many connected nodes serve it
        self._holder: dict[str, NodeSlot] = {}  # task id -> the node that holds it
        self.waiters = Waiters()
        self.defaults = TaskDefaults()  # the queue and priority of tasks whose callers say none
        self.due_timer = DueTimer(store, scheduler)  # queues SCHEDULED tasks when their time comes
        self.writes = StoreWrites(store)  # what could not be written while the store was unreachable
        self.rate_limits = RateLimits(store, scheduler)  # per task name, for all nodes together
        self._assigner = Assigner(store, self.rate_limits)
        self._direct = DirectPath(store, self.rate_limits)
        # Only the hooks that override a point are called there, so an unused point costs nothing.
        self._before_enqueue = overriding(hooks, "before_enqueue")
        self._after_enqueue = overriding(hooks, "after_enqueue")
        self._before_assign = overriding(hooks, "before_assign")
        self._retry_delay = overriding(hooks, "retry_delay")
        self._after_finish = overriding(hooks, "after_finish")
        self._retries = Retrying(store, scheduler, self._release, overriding(hooks, "on_retry"))
        self._on_node_added = overriding(hooks, "on_node_added")
        self._on_node_lost = overriding(hooks, "on_node_lost")
        self._ahead = RoundAhead(self._assigner, self.writes, self.end, self._ended, self._hand)  # (a pipelined store)

    # ---- tasks -----------------------------------------------------------------------------------

    def submit(
        self,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        task_id: str | None = None,
        options: dict[str, Any] | None = None,
        placement: Placement | None = None,
        owner: str | None = None,
    ) -> TaskRecord:
        """Queue a task, or return the task that has this id already (a caller asking again: whether it
        may is the caller's to check, by the returned task's ``owner``). Raises UnknownMethod when nodes
        are connected and none serves ``method`` (else the task waits for one), QueueFull when
        ``max_queued`` tasks wait, or whatever a ``before_enqueue`` hook raises."""
        if not method:
            raise InvalidParams("the method name is empty")
        queue, priority, due_at = self.defaults.resolve(method, placement)
        record = TaskRecord(task_id or uuid.uuid4().hex, method, args, kwargs, options=options or NO_ENTRIES, owner=owner)
        record.queue, record.priority, record.due_at = queue, priority, due_at
        if self.writes.down:
            raise StoreUnavailable("the broker cannot reach its store now: nothing was queued; try again")
        if self._local is not None and method.startswith(wire.BROKER_TASK_PREFIX) and method in self._local:
            return self._run_here(record) if self.store.add(record, self.size_hint) else self.store.get(record.id) or record
        if self._nodes and not self._served[method] and method not in self.store.known_methods():
            if task_id is not None and (existing := self.store.get(task_id)) is not None:
                return existing
            # The message is the specification's own, so any JSON-RPC client recognises it; the name is in data.
            raise UnknownMethod(jsonrpc.ERROR_MESSAGES[jsonrpc.METHOD_NOT_FOUND], {"method": method})
        for hook in self._before_enqueue:
            hook(record)
        waiting = sum(self.store.queued_counts().values()) + (self.store.state_counts().get(SCHEDULED, 0) if due_at else 0)
        if waiting >= self.max_queued:
            raise QueueFull(f"the queue is full ({self.max_queued} tasks)", {"limit": self.max_queued, "bound": "queue"})
        if (holder := self.defaults.unique_holder(self.store, record)) is not None:
            return holder  # @task(unique_for=...): this call's twin is queued or running
        node = self._direct.node_for(record, self._slots) if self._slots else None
        if not (self.store.add(record, self.size_hint) if node is None else self.store.add_held(record, self.size_hint)):
            return self.store.get(record.id) or record  # (the store refused it: it has it)
        self.writes.added += 1
        if node is not None:  # (the node holds it from now on: a revoke before the round's end tells it)
            self._holder[record.id] = self._direct.hand(node, record)
        if record.state == SCHEDULED:
            self.due_timer.arm(record.due_at)
        self.enqueued(record)
        return record

    def enqueued(self, record: TaskRecord) -> None:
        """The task was queued (as new, or again by an operator): the hooks hear of it."""
        for hook in self._after_enqueue:
            hook(record)

    def _run_here(self, record: TaskRecord) -> TaskRecord:
        """A broker task runs at once, in the broker's loop: keep such tasks quick."""
        assert self._local is not None
        result, error = self._local.run(record.method, record.args, record.kwargs)
        self.end([(record, Outcome(record.id, FAILED if error is not None else FINISHED, result, error))])
        return record

    def find(self, task_id: str) -> TaskRecord:
        """The task, as a node holds it if one does; raises UnknownTask for an id the broker does not know."""
        holder = self._holder.get(task_id)
        record = holder.held[task_id] if holder is not None else self.store.get(task_id)
        if record is None:
            raise UnknownTask(f"unknown task id {task_id!r}", {"task_id": task_id})
        return record

    def state(self, record: TaskRecord) -> str:
        """The task's state as callers see it: RUNNING once the node holding it said it started it."""
        holder = self._holder.get(record.id)
        return RUNNING if holder is not None and record.id in holder.started else record.state

    def wait(self, record: TaskRecord, on_outcome: OnOutcome) -> int | None:
        """Call ``on_outcome(record)`` once the task ends: now if it has (None), else a token to cancel."""
        if record.state in FINAL_STATES:
            on_outcome(record)
            return None
        return self.waiters.add(record.id, on_outcome, record.owner)

    def cancel_wait(self, task_id: str, token: int) -> None:
        self.waiters.cancel(task_id, token)

    def revoke(self, task_id: str) -> tuple[str, NodeId | None]:
        """Revoke a task: queued, it never runs; held, its node must stop it. Returns the state afterwards
        (REVOKED, or the final state it reached first) and the node to tell, if any. Raises UnknownTask."""
        self.settle()
        record = self.find(task_id)
        if record.state in FINAL_STATES:
            return record.state, None
        holder = self._holder.get(task_id)
        error = TaskRevoked(f"task {task_id} was revoked", {"task_id": task_id}).to_error_object()
        self.end([(record, Outcome(task_id, REVOKED, error=error, held=holder is not None))])
        return REVOKED, holder.id if holder is not None else None

    def holder(self, task_id: str) -> NodeId | None:
        """The node that holds the task, if one does."""
        return node.id if (node := self._holder.get(task_id)) is not None else None

    def expire(self, now: float | None = None, limit: int = 10_000) -> int:
        """Forget up to ``limit`` outcomes older than ``result_ttl_s``; returns how many."""
        if not self.result_ttl_s:
            return 0
        return self.store.expire((time.time() if now is None else now) - self.result_ttl_s, limit)

    @property
    def queued(self) -> Mapping[str, int]:
        """How many tasks are queued, by name (only names with some)."""
        return self.store.queued_counts()

    # ---- nodes -----------------------------------------------------------------------------------

    def connect(
        self,
        node_id: NodeId,
        methods: Iterable[str],
        credit: int,
        running: Iterable[Any] = (),
        queues: frozenset[str] = DEFAULT_QUEUES,
    ) -> NodeSlot:
        """Register a node with the names it serves and its credit. A node that connects again starts
        afresh: what it held goes back to the queue, except ``running``, the tasks it says it is still
        running, which stay its own (unless another node holds them, or they ended)."""
        self.lose(node_id, "connected again")
        node = NodeSlot(node_id, frozenset(methods), min(max(credit, 0), MAX_CREDIT), queues=queues)
        self.store.remember_methods(node.methods)  # tasks of these names wait while the node restarts
        self._nodes[node_id] = node
        self._slots = list(self._nodes.values())
        self._served.update(node.methods)
        candidates = [task_id for task_id in running if isinstance(task_id, str) and task_id not in self._holder]
        adopt = [task_id for task_id in candidates if (found := self.store.get(task_id)) and found.method in node.methods]
        for record in self.store.claim(adopt):
            node.held[record.id] = record
            node.started.add(record.id)
            self._holder[record.id] = node
        for hook in self._on_node_added:
            hook(node)
        return node

    def node(self, node_id: NodeId) -> NodeSlot | None:
        return self._nodes.get(node_id)

    @property
    def nodes(self) -> Iterator[NodeSlot]:
        return iter(list(self._nodes.values()))

    def grant(self, node: NodeSlot, credit: int) -> None:
        """The node may be sent ``credit`` more tasks (less, if negative); ignored once it drains."""
        if not node.draining:
            node.credit = min(max(0, node.credit + credit), MAX_CREDIT)

    def started(self, node: NodeSlot, task_ids: Iterable[Any]) -> None:
        """The node started these tasks: they are RUNNING (if it holds them)."""
        for task_id in task_ids:
            if isinstance(task_id, str) and task_id in node.held:
                node.started.add(task_id)

    def release(self, node: NodeSlot, task_ids: Iterable[Any], draining: bool = False) -> None:
        """The node hands back tasks it will not start (each back in its old place in the queue);
        ``draining``: it is stopping and takes no more."""
        self.settle()
        released = [task_id for task_id in task_ids if isinstance(task_id, str) and self._holder.get(task_id) is node]
        for task_id in released:
            self._release(task_id)
        self.writes.write(functools.partial(self.store.requeue, released))
        if draining:
            node.draining = True
            node.credit = 0

    def lose(self, node_id: NodeId, reason: str) -> NodeSlot | None:
        """Forget a node; every task it held goes back to the queue. Returns it (with what it held), if it was known."""
        self.settle()
        node = self._nodes.pop(node_id, None)
        if node is None:
            return None
        self._slots = list(self._nodes.values())
        self._served.subtract(node.methods)
        for method in node.methods:  # names no node serves any more are forgotten, not kept at zero
            if self._served[method] <= 0:
                del self._served[method]
        for task_id in node.held:
            self._holder.pop(task_id, None)
        requeued = list(node.held.values())
        self.writes.write(functools.partial(self.store.requeue, list(node.held)))
        for hook in self._on_node_lost:
            hook(node, requeued, reason)
        return node

    def assign(self) -> list[tuple[NodeSlot, list[TaskRecord]]]:
        """Hand queued tasks to nodes with credit (fairly: see :mod:`zerotask.broker.assignment`);
        returns each node with the tasks to send it. With a ``pipelined`` store, sends the round's one
        write instead (its adds, the outcomes reported, the take): :meth:`take_answered` hands out."""
        if not self.store.pipelined:
            direct = self._direct.take(self._holder) if self._direct.handed else []
            return self._hand(direct + self._assigner.assign(self._nodes.values()))
        self._ahead.send(self._nodes.values(), self._outcomes)
        return []

    @property
    def taking(self) -> bool:  # a round was sent ahead: take_answered must read it, or hand out what it took
        return self.store.pipelined and self._ahead.taking

    def take_answered(self) -> list[tuple[NodeSlot, list[TaskRecord]]]:
        """What the round sent ahead took, as assign returns it, its outcomes recorded (waiting for the
        store's answer). If the store failed, the next commits write again what it carried."""
        return [(node, tasks) for node, tasks in self._ahead.answered() if self._nodes.get(node.id) is node]  # (lost: requeued)

    def _hand(self, handed: list[tuple[NodeSlot, list[TaskRecord]]]) -> list[tuple[NodeSlot, list[TaskRecord]]]:
        sent = []
        for node, records in handed:
            if self._nodes.get(node.id) is not node or node.draining:  # (lost or draining while a take was under way)
                ids = [record.id for record in records if node.held.pop(record.id, None)]
                self.writes.write(functools.partial(self.store.requeue, ids))
                continue
            for record in records:
                self._holder[record.id] = node
            for hook in self._before_assign:
                hook(node, records)
            sent.append((node, records))
        return sent

    def report(self, node: NodeSlot | None, outcomes: list[Any]) -> None:
        """Record the outcomes a node reported (sorted by :func:`~zerotask.broker.outcomes.read_report`)
        with one store call, and retry what the hooks say to. A task leaves its node only once its
        outcome is stored (see :meth:`end`). Raises InvalidParams at the first element that is not an
        outcome, after recording those before it."""
        report = read_report(node, outcomes, self._holder, self._retry_delay)
        if node is not None:
            node.finished += report.decided
        try:
            self.end(report.finals, later=True)
            for record, delay_s in report.retries:
                self._retries.retry(record, delay_s)
        except StoreUnavailable:  # again once the store is back: what was recorded is skipped then
            self.writes.keep(functools.partial(self.report, node, outcomes))
        if report.problem is not None:
            raise report.problem

    # ---- the store: commits, other brokers, outages ------------------------------------------------

    def commit(self) -> bool:
        """End a round: flush the store (after what failed to be written before). Returns whether this
        round's messages may go out: False if tasks were added and the store could not make them durable
        (it keeps them for the next commit) or has not answered yet. While the store is down, submits are refused."""
        carried = self.writes.added and self._assigner.taking  # the round's adds went with its write, sent ahead
        durable, refused = self.writes.flush()
        for record in refused:
            self.waiters.refused(self.store, record)
        return durable and not carried

    def take_changes(self) -> list[tuple[NodeId, str]]:
        """Settle what other brokers sharing the store did: the waiters of tasks that ended there get
        the stored outcome. Returns ``(node, task id)`` for the tasks a node here holds that ended
        elsewhere (revoked, or run again after a lease ran out): that node should stop them."""
        self.settle()
        revoke = []
        for task_id in self.waiters.catch_up(self.store, self._holder.__contains__):
            holder = self._holder[task_id]
            self._release(task_id)
            revoke.append((holder.id, task_id))
        return revoke

    def announce(self) -> None:
        """Tell the store again which names the nodes here serve (it forgets names not announced lately)."""
        self.writes.write(functools.partial(self.store.remember_methods, list(self._served)))

    # ---- inside ----------------------------------------------------------------------------------

    def _release(self, task_id: str) -> TaskRecord | None:
        """The task is no longer held by any node; returns it as it was assigned, if it was."""
        if (node := self._holder.pop(task_id, None)) is not None:
            node.started.discard(task_id)
            return node.held.pop(task_id, None)
        return None

    def end(self, finals: list[tuple[TaskRecord, Outcome]], later: bool = False) -> None:
        """Store outcomes in one call; then (only then) release their tasks from the nodes that held
        them, and answer the waiters and the hooks of those recorded now. ``later``, with a store that
        sends ahead (``pipelined``): with the round's write (see :meth:`assign`)."""
        if later and self.store.pipelined:
            self._ahead.unsent += finals
        elif finals:
            self._ended(finals, self.store.finish_many(self._outcomes(finals)))

    def settle(self) -> None:
        """Record what waits to be (:meth:`end` ``later``, a round sent ahead), so that what follows sees
        tasks as the store does: whatever ends or moves tasks calls it first."""
        self._ahead.settle()

    def _outcomes(self, finals: list[tuple[TaskRecord, Outcome]]) -> list[Outcome]:
        if self.store.shared:  # another broker may have queued it again (a lease that ran out): let the store check
            for _, outcome in finals:
                outcome.held = False
        return [outcome for _, outcome in finals]

    def _ended(self, finals: list[tuple[TaskRecord, Outcome]], recorded: list[bool]) -> None:
        holders, waiting, after_finish = self._holder, self.waiters.waiting, self._after_finish
        for (record, outcome), now in zip(finals, recorded, strict=True):
            if (node := holders.pop(record.id, None)) is not None:  # self._release(record.id), inline: per task
                node.started.discard(record.id)
                node.held.pop(record.id, None)
            if not now:
                continue
            record.state, record.result, record.error = outcome.state, outcome.result, outcome.error
            if record.id in waiting:
                self.waiters.settle(record)
            for hook in after_finish:
                hook(record)


__all__ = ["BrokerCore", "NodeSlot", "OnOutcome"]
