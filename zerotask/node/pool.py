"""WorkerPool: a node's worker processes, the tasks waiting for them, and what happens when one dies.

The pool hands tasks to idle workers in batches (several tasks per hand-off when many are waiting,
one at a time when few are), enforces time limits by killing the worker, replaces workers that die,
and measures how long a task takes, from which the node decides how many tasks to hold in advance.
When a worker dies, only the task it was running is blamed (the worker's shared memory says which,
see :mod:`zerotask.node.worker`); the rest of its batch without an outcome runs again.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from zerotask import jsonrpc
from zerotask.exceptions import ResultTooLarge, TimeLimitExceeded, WorkerLost, ZerotaskError
from zerotask.loop import EventLoop, Timer
from zerotask.node.worker import MAX_BATCH, Worker
from zerotask.task import Dispatcher

log = logging.getLogger(__name__)

RUNNING_AFTER_S = 0.001  # a task still running after this long is reported RUNNING
BATCH_WINDOW_S = 0.001  # a hand-off holds about this much work
ENVELOPE_ROOM = 4096  # bytes kept free for the JSON-RPC around an outcome
REVOKE_RECHECK_S = 0.01  # when to look again whether a worker started a task just as it was revoked

Task = dict[str, Any]


class WorkerPool:
    """``count`` worker processes fed from one local queue. Outcomes go to ``report`` (one dict per
    task, ``{"task_id", "result"}`` or ``{"task_id", "error"}``)."""

    def __init__(
        self,
        server: EventLoop,
        dispatcher: Dispatcher,
        count: int,
        report: Callable[[dict[str, Any]], None],
        default_time_limit_s: float | None = None,
    ) -> None:
        self._server = server
        self._dispatcher = dispatcher
        self.count = count
        self._report = report
        self.default_time_limit_s = default_time_limit_s
        self.max_outcome_bytes = 16 * 1024 * 1024 - ENVELOPE_ROOM
        self.workers: list[Worker] = []
        self.pending: deque[Task] = deque()
        self._handed: dict[str, float] = {}  # task id -> when a worker got it; until reported running
        self._wake_pending = False
        self.service_s = 1.0  # moving average of one task's time, pessimistic until measured
        self._limits: dict[int, Timer] = {}  # worker index -> the time limit of the task it runs

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.count):
            self.workers.append(self._start_worker(index))

    def stop(self) -> None:
        for worker in self.workers:
            if not worker.connection.closed:
                self._server.remove_socket(worker.fileno())
            worker.stop()
        self.workers = []

    def _start_worker(self, index: int) -> Worker:
        siblings = [other.connection for other in self.workers if other.index != index and not other.connection.closed]
        worker = Worker(self._dispatcher, index, siblings)
        self._server.add_socket(worker.fileno(), functools.partial(self._on_worker, worker))
        return worker

    # ---- what the node asks ----------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Tasks in the node's hands: waiting here or handed to a worker."""
        return len(self.pending) + sum(len(worker.batch) for worker in self.workers)

    @property
    def batch_size(self) -> int:
        """Tasks per hand-off: as many as a worker runs in BATCH_WINDOW_S, so that batching saves
        wake-ups for short tasks and never leaves a long task waiting behind another."""
        return max(1, min(MAX_BATCH, int(BATCH_WINDOW_S / self.service_s)))

    @property
    def busy(self) -> bool:
        return any(not worker.idle for worker in self.workers)

    def running_ids(self) -> list[str]:
        return [task["task_id"] for worker in self.workers for task in worker.batch]

    def add(self, tasks: list[Task]) -> None:
        self.pending.extend(tasks)
        self.dispatch()

    def take_pending(self) -> list[str]:
        """Remove the tasks no worker has started and return their ids (to hand them back)."""
        task_ids = [task["task_id"] for task in self.pending]
        self.pending.clear()
        return task_ids

    def revoke(self, task_ids: set[str]) -> None:
        """Drop revoked tasks that wait here or in a worker's batch (the worker passes over them, and
        nothing is reported for them); kill a worker that is running one (the rest of its batch comes
        back to the queue)."""
        self.pending = deque(task for task in self.pending if task["task_id"] not in task_ids)
        for worker in self.workers:
            if worker.revoke(task_ids):
                self._stop_revoked(worker)
                # A worker that started a marked task just as it was marked may have missed the mark while
                # we missed its start (neither side fences its memory): by then both writes are visible.
                self._server.call_later(REVOKE_RECHECK_S, functools.partial(self._stop_revoked, worker))
        for task_id in task_ids:
            self._handed.pop(task_id, None)

    def _stop_revoked(self, worker: Worker) -> None:
        if worker.kill_reason is None and worker.runs_revoked():
            log.info("revoking the task worker %d is running: killing it", worker.index)
            worker.kill("revoked")

    def kill_busy(self) -> None:
        """Stop every running task now (the grace period is over); nothing is reported for them."""
        for worker in self.workers:
            if not worker.idle:
                worker.kill("shutdown")

    # ---- handing tasks over ----------------------------------------------------------------------

    def dispatch(self) -> None:
        idle = [worker for worker in self.workers if worker.idle and worker.kill_reason is None]
        for position, worker in enumerate(idle):
            if not self.pending:
                return
            share = min(self.batch_size, math.ceil(len(self.pending) / (len(idle) - position)))
            batch = [self.pending.popleft()]
            limit = self._time_limit(batch[0])
            # A task with a time limit runs alone, so that the limit's timer is the task's own.
            while limit is None and len(batch) < share and self._time_limit(self.pending[0]) is None:
                batch.append(self.pending.popleft())
            worker.run(batch)
            now = time.monotonic()
            for task in batch:
                self._handed[task["task_id"]] = now
            if not self._wake_pending:  # make sure the node looks again once they are due to be reported
                self._wake_pending = True
                self._server.call_later(RUNNING_AFTER_S, self._woken)
            if limit is not None:
                self._limits[worker.index] = self._server.call_later(limit, functools.partial(self._time_up, worker, batch[0]))

    def _woken(self) -> None:
        self._wake_pending = False
        if self._handed:
            self._wake_pending = True
            self._server.call_later(RUNNING_AFTER_S, self._woken)

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

    def _time_limit(self, task: Task) -> float | None:
        limit = task.get("time_limit_s")
        if isinstance(limit, int | float) and limit > 0:
            return float(limit)
        found = self._dispatcher.get(task.get("method", ""))
        if found is not None and found.options.time_limit_s is not None:
            return found.options.time_limit_s
        return self.default_time_limit_s

    def _time_up(self, worker: Worker, task: Task) -> None:
        if worker.task is task:
            log.warning("task %s (%s) ran past its time limit: killing worker %d", task["task_id"], task["method"], worker.index)
            worker.kill("timeout")

    # ---- outcomes --------------------------------------------------------------------------------

    def _on_worker(self, worker: Worker) -> None:
        received = worker.receive()
        timer = self._limits.pop(worker.index, None)
        if timer is not None:
            timer.cancel()
        if received is None:
            self._replace(worker)
        else:
            ended, busy_s, size = received
            self.service_s += 0.2 * (max(busy_s, 1e-6) / max(len(ended), 1) - self.service_s)
            for task, outcome in ended:
                self._handed.pop(task["task_id"], None)
                if outcome is None:
                    continue  # revoked before it started: the broker recorded that already
                if size > self.max_outcome_bytes and len(jsonrpc.dumps(outcome)) > self.max_outcome_bytes:
                    # The broker would disconnect us for sending it, and the caller would wait forever.
                    self._fail(task, ResultTooLarge(f"the outcome of {task['method']} is over the broker's size limit"))
                else:
                    self._report(outcome)
        self.dispatch()

    def _replace(self, worker: Worker) -> None:
        """A worker died: report the task it was running, unless the node killed it on purpose or the
        task was revoked; put the rest of its batch back in the queue (the tasks before the running one
        too, if their outcomes had not arrived: at least once); start another worker in its place."""
        worker.process.join(1.0)
        code = worker.process.exitcode
        reason = worker.kill_reason
        running = worker.running()  # before stop(), which unmaps the memory that says which it was
        self._server.remove_socket(worker.fileno())
        worker.stop()
        batch = list(worker.batch)
        worker.batch.clear()
        for task in batch:
            self._handed.pop(task["task_id"], None)
        if reason == "shutdown":
            return
        if running is not None and running["task_id"] not in worker.revoked:
            if reason == "timeout":
                limit = self._time_limit(running)
                self._fail(running, TimeLimitExceeded(f"{running['method']} ran past its time limit of {limit} s"))
            elif reason is None:
                log.error("worker %d died running %s (exit code %s)", worker.index, running["method"], code)
                self._fail(running, WorkerLost(f"the worker running {running['method']} died (exit code {code})"))
            else:  # killed for a revoked task it had just left: this one goes back too
                running = None
        again = [task for task in batch if task is not running and task["task_id"] not in worker.revoked]
        self.pending.extendleft(reversed(again))
        self.workers[worker.index] = self._start_worker(worker.index)

    def _fail(self, task: Task, error: ZerotaskError) -> None:
        """Report a failure the node saw (the worker died, ran too long...), with the task's retry decision."""
        attempt = task.get("attempt")
        failure = self._dispatcher.failure(task["method"], error, "", attempt if type(attempt) is int else 0)
        failure["data"]["type"] = type(error).__name__
        failure["message"] = f"{type(error).__name__}: {error}"
        self._report({"task_id": task["task_id"], "error": failure})
