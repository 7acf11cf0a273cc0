"""What every pool of a node does alike, and the surface the node uses (:class:`Pool`).

A pool holds the tasks the broker sent until a worker (a process, a thread, an event loop) takes them,
hands them over in batches sized to how long a task takes, reports which have run for a while
(RUNNING), checks each outcome against the broker's size limit, and reports what the node itself saw
go wrong (a time limit, a lost worker) with the task's retry decision. :mod:`zerotask.node.pool` (worker
processes) and :mod:`zerotask.node.threads` (threads) build on :class:`BasePool`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zerotask import jsonrpc
from zerotask.exceptions import ResultTooLarge, ZerotaskError
from zerotask.loop import EventLoop, Timer
from zerotask.node.child import MAX_BATCH
from zerotask.node.outcome import Outcome, Task, failure, time_limit_s
from zerotask.task import Dispatcher

RUNNING_AFTER_S = 0.001  # a task still running after this long is reported RUNNING
BATCH_WINDOW_S = 0.001  # a hand-off holds about this much work
ENVELOPE_ROOM = 4096  # bytes kept free for the JSON-RPC around an outcome
DEFAULT_MAX_OUTCOME_BYTES = 16 * 1024 * 1024 - ENVELOPE_ROOM
Report = Callable[[Outcome], None]


class Idle(Protocol):
    @property
    def idle(self) -> bool: ...


class Pool(Protocol):
    """What the node asks of its pool. ``count``: workers (processes or threads); ``slots``: tasks it
    can run at once (``count`` times ``concurrency`` when it serves async tasks): the node asks the
    broker for that many, plus a prefetch. ``held``: tasks in its hands; ``service_s``: the moving
    average of one task's time."""

    max_outcome_bytes: int

    @property
    def count(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def service_s(self) -> float: ...
    @property
    def workers(self) -> Sequence[Idle]: ...
    @property
    def held(self) -> int: ...
    @property
    def busy(self) -> bool: ...
    @property
    def batch_size(self) -> int: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add(self, tasks: list[Task]) -> None: ...
    def collect(self) -> None: ...
    def take_pending(self) -> list[str]: ...
    def revoke(self, task_ids: set[str]) -> None: ...
    def kill_busy(self) -> None: ...
    def running_ids(self) -> list[str]: ...
    def due_running(self) -> list[str]: ...
    def take_progress(self) -> list[dict[str, Any]]: ...
    def recycle(self, max_tasks: int | None, max_memory_bytes: int | None) -> None: ...


class BasePool:
    """The bookkeeping of a pool of ``count`` workers whose outcomes go to ``report``; a subclass hands
    tasks over in :meth:`dispatch`. ``concurrency``: async tasks at once per worker."""

    def __init__(
        self,
        server: EventLoop,
        dispatcher: Dispatcher,
        count: int,
        report: Report,
        default_time_limit_s: float | None = None,
        concurrency: int = 1,
    ) -> None:
        self._server = server
        self._dispatcher = dispatcher
        self.count = count
        self.concurrency = concurrency
        self.slots = count * concurrency
        self._report = report
        self.default_time_limit_s = default_time_limit_s
        self.max_outcome_bytes = DEFAULT_MAX_OUTCOME_BYTES
        self.pending: deque[Task] = deque()
        self._handed: dict[str, float] = {}  # task id -> when a worker got it; until reported running
        self._running_check: Timer | None = None  # the wake-up that reports RUNNING the tasks still handed then
        self.service_s = 1.0  # moving average of one task's time, pessimistic until measured
        self.progress: list[dict[str, Any]] = []  # what running tasks reported (report_progress), to send on
        # Worker processes are replaced, between tasks, after this many tasks or above this RSS (bytes).
        self.max_tasks_per_worker: int | None = None
        self.max_memory_per_worker: int | None = None
        self._limits: dict[str, Timer] = {}  # task id -> the timer of its time limit
        # What no task can be, it need not be asked (a client may give any task a limit of its own).
        self._any_async = any(task.is_async for task in dispatcher.tasks())
        self._any_limit = default_time_limit_s is not None or any(task.options.time_limit_s for task in dispatcher.tasks())

    def dispatch(self) -> None:
        """Hand waiting tasks to free workers."""
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        """Tasks per hand-off: as many as a worker runs in BATCH_WINDOW_S, so that batching saves
        wake-ups for short tasks and never leaves a long task waiting behind another."""
        return max(1, min(MAX_BATCH, int(BATCH_WINDOW_S / self.service_s)))

    def add(self, tasks: list[Task]) -> None:
        self.pending.extend(tasks)
        self.dispatch()

    def collect(self) -> None:
        """Report the outcomes that came in during this round of the node's loop and no callback has
        taken yet: the node calls it at the end of each round, before it reports to the broker."""

    def take_pending(self) -> list[str]:
        """Remove the tasks no worker has started and return their ids (to hand them back)."""
        task_ids = [task["task_id"] for task in self.pending]
        self.pending.clear()
        return task_ids

    def _forget_pending(self, task_ids: set[str]) -> None:
        """Drop revoked tasks that wait here: nothing is reported for them."""
        if any(task["task_id"] in task_ids for task in self.pending):
            self.pending = deque(task for task in self.pending if task["task_id"] not in task_ids)
        for task_id in task_ids:
            self._unhand(task_id)

    def _take_sync(self, share: int) -> tuple[list[Task], float | None]:
        """Up to ``share`` sync tasks from the head of the queue (which is one), and the time limit of
        the first. A task with a time limit goes alone, so that the limit's timer, started now, is the
        task's own."""
        pending = self.pending
        batch = [pending.popleft()]
        limit = self._time_limit(batch[0])
        if limit is None:
            any_async, any_limit = self._any_async, self._any_limit
            while len(batch) < share and pending:
                following = pending[0]
                if (any_async and self._is_async(following)) or (
                    (any_limit or "time_limit_s" in following) and self._time_limit(following) is not None
                ):
                    break
                batch.append(pending.popleft())
        return batch, limit

    def _is_async(self, task: Task) -> bool:
        return self._any_async and self._dispatcher.is_async(task.get("method", ""))

    def _time_limit(self, task: Task) -> float | None:
        return time_limit_s(self._dispatcher, task, self.default_time_limit_s)

    # ---- RUNNING ----------------------------------------------------------------------------------

    def _note_handed(self, tasks: list[Task], now: float) -> None:
        for task in tasks:
            self._handed[task["task_id"]] = now
        if self._running_check is None:  # make sure the node looks again once they are due to be reported
            self._running_check = self._server.call_later(RUNNING_AFTER_S, self._woken)

    def _woken(self) -> None:
        self._running_check = None
        if self._handed:
            self._running_check = self._server.call_later(RUNNING_AFTER_S, self._woken)

    def _unhand(self, task_id: str) -> None:
        """The task needs no RUNNING report (it ended, or is no longer ours). Once no task does, the
        wake-up is cancelled: a node whose tasks all ended sooner need not wake (it did once per task)."""
        self._handed.pop(task_id, None)
        if not self._handed and self._running_check is not None:
            self._running_check.cancel()
            self._running_check = None

    def recycle(self, max_tasks: int | None, max_memory_bytes: int | None) -> None:
        """Replace a worker process, between two tasks, once it ran ``max_tasks`` or its RSS is above
        ``max_memory_bytes`` (a thread pool has no process to replace: it ignores this)."""
        self.max_tasks_per_worker, self.max_memory_per_worker = max_tasks, max_memory_bytes

    def take_progress(self) -> list[dict[str, Any]]:
        """The progress reports of running tasks since the last call, for the broker."""
        progress, self.progress = self.progress, []
        return progress

    def due_running(self) -> list[str]:
        """Tasks a worker has held for RUNNING_AFTER_S and not finished: the ones worth reporting as
        RUNNING. A shorter task is reported only by its outcome, which saves the broker a message."""
        if not self._handed:
            return []
        cutoff = time.monotonic() - RUNNING_AFTER_S
        due = [task_id for task_id, handed_at in self._handed.items() if handed_at <= cutoff]
        for task_id in due:
            del self._handed[task_id]
        return due

    # ---- outcomes ---------------------------------------------------------------------------------

    def _measured(self, busy_s: float, tasks: int) -> None:
        self.service_s += 0.2 * (max(busy_s, 1e-6) / max(tasks, 1) - self.service_s)

    def _deliver(self, task: Task, outcome: Outcome | None, size: int) -> None:
        """Report a task's outcome (None: revoked, nothing to report); ``size``: at least its encoded size."""
        self._unhand(task["task_id"])
        if self._limits:
            self._cancel_limit(task)
        if outcome is None:
            return  # revoked: the broker recorded that already
        if size > self.max_outcome_bytes and len(jsonrpc.dumps(outcome)) > self.max_outcome_bytes:
            # The broker would disconnect us for sending it, and the caller would wait forever.
            self._fail(task, ResultTooLarge(f"the outcome of {task['method']} is over the broker's size limit"))
        else:
            self._report(outcome)

    def _cancel_limit(self, task: Task) -> None:
        timer = self._limits.pop(task["task_id"], None)
        if timer is not None:
            timer.cancel()

    def _fail(self, task: Task, error: ZerotaskError) -> None:
        """Report a failure the node saw (the worker died, ran too long...), with the task's retry decision."""
        self._unhand(task["task_id"])
        self._report(failure(self._dispatcher, task, error))
