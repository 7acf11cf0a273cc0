"""WorkerPool: a node's worker processes, the tasks waiting for them, and what happens when one dies.

The pool hands sync tasks to idle workers in batches (several tasks per hand-off when many are waiting,
one at a time when few are), and async tasks to workers with room, up to ``concurrency`` at once each
(never while a worker runs sync tasks: those block its event loop). It enforces time limits by killing
the worker (an async task is cancelled in its worker at its limit; the kill comes only if that did not
end it ASYNC_LIMIT_MARGIN_S later), replaces workers that die, and measures how long a task takes, from
which the node decides how many tasks to hold in advance. When a worker dies, only the tasks it was
running are blamed (the worker's shared memory says which, see :mod:`zerotask.node.worker`): the one
task of a sync batch, or every async task it had started, since any of them may have crashed it; the
rest of what it held runs again.
"""

from __future__ import annotations

import functools
import logging
import math
import time

from zerotask.exceptions import TimeLimitExceeded, WorkerLost
from zerotask.node.aio import ASYNC_LIMIT_MARGIN_S
from zerotask.node.base import BasePool
from zerotask.node.outcome import Task, time_limit_message
from zerotask.node.worker import Worker

log = logging.getLogger(__name__)

REVOKE_RECHECK_S = 0.01  # when to look again whether a worker started a task just as it was revoked


class WorkerPool(BasePool):
    """``count`` worker processes fed from one local queue, in order: a sync task at its head waits for
    an idle worker, and the async tasks behind it wait too, so that a stream of async tasks never keeps
    every worker from going idle. Outcomes go to ``report``."""

    workers: list[Worker]

    def start(self) -> None:
        self.workers = []
        for index in range(self.count):
            self.workers.append(self._start_worker(index))

    def stop(self) -> None:
        for worker in self.workers:
            if not worker.connection.closed:
                self._server.remove_socket(worker.fileno())
            worker.stop()
        self.workers = []

    def _start_worker(self, index: int) -> Worker:
        siblings = [
            end for other in self.workers if other.index != index and not other.connection.closed for end in other.node_ends()
        ]
        worker = Worker(self._dispatcher, index, siblings, self.concurrency, self.default_time_limit_s)
        self._server.add_socket(worker.fileno(), functools.partial(self._on_worker, worker))
        return worker

    # ---- what the node asks ----------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Tasks in the node's hands: waiting here or handed to a worker."""
        return len(self.pending) + sum(len(worker.in_flight) for worker in self.workers)

    @property
    def busy(self) -> bool:
        return any(not worker.idle for worker in self.workers)

    def running_ids(self) -> list[str]:
        return [task["task_id"] for worker in self.workers for task in worker.in_flight.values()]

    def revoke(self, task_ids: set[str]) -> None:
        """Drop revoked tasks that wait here or in a worker (the worker passes over them, and nothing is
        reported for them); stop a running one: cancel it if async, else kill its worker (what else
        the worker held comes back to the queue)."""
        self._forget_pending(task_ids)
        for worker in self.workers:
            for slot in worker.revoke(task_ids):
                task = worker.in_flight[slot]
                self._stop_revoked(worker, slot, task)
                # A worker that started a marked task just as it was marked may have missed the mark while
                # we missed its start (neither side fences its memory): by then both writes are visible.
                self._server.call_later(REVOKE_RECHECK_S, functools.partial(self._stop_revoked, worker, slot, task))

    def _stop_revoked(self, worker: Worker, slot: int, task: Task) -> None:
        if worker.kill_reason is not None or worker.in_flight.get(slot) is not task or not worker.runs(slot):
            return
        if self._is_async(task):
            worker.cancel([slot])
        else:
            log.info("revoking the task worker %d is running: killing it", worker.index)
            worker.kill("revoked")

    def kill_busy(self) -> None:
        """Stop every running task now (the grace period is over); nothing is reported for them."""
        for worker in self.workers:
            if not worker.idle:
                worker.kill("shutdown")

    # ---- handing tasks over ----------------------------------------------------------------------

    def dispatch(self) -> None:
        while self.pending:
            if self._is_async(self.pending[0]):
                if not self._hand_async():
                    return
            elif not self._hand_sync():
                return

    def _hand_sync(self) -> bool:
        idle = [worker for worker in self.workers if worker.idle and worker.kill_reason is None]
        if not idle:
            return False
        batch, limit = self._take_sync(min(self.batch_size, math.ceil(len(self.pending) / len(idle))))
        slots = idle[0].run(batch, sync=True)
        if limit is not None:  # killed at its limit
            self._limit(idle[0], slots[0], batch[0], limit)
        self._note_handed(batch, time.monotonic())
        return True

    def _hand_async(self) -> bool:
        """Async tasks from the head of the queue to the worker with the most room, spread over those with any."""
        roomy = [worker for worker in self.workers if worker.room() > 0]
        if not roomy:
            return False
        worker = max(roomy, key=Worker.room)
        share = min(worker.room(), math.ceil(len(self.pending) / len(roomy)))
        batch = [self.pending.popleft()]
        while len(batch) < share and self.pending and self._is_async(self.pending[0]):
            batch.append(self.pending.popleft())
        for slot, task in zip(worker.run(batch, sync=False), batch, strict=True):
            limit = self._time_limit(task)
            if limit is not None:  # cancelled at its limit by its worker; killed if that did not end it
                self._limit(worker, slot, task, limit + ASYNC_LIMIT_MARGIN_S)
        self._note_handed(batch, time.monotonic())
        return True

    def _limit(self, worker: Worker, slot: int, task: Task, after_s: float) -> None:
        timer = self._server.call_later(after_s, functools.partial(self._time_up, worker, slot, task))
        self._limits[task["task_id"]] = timer

    def _time_up(self, worker: Worker, slot: int, task: Task) -> None:
        self._limits.pop(task["task_id"], None)
        if worker.kill_reason is None and worker.in_flight.get(slot) is task:
            log.warning("task %s (%s) ran past its time limit: killing worker %d", task["task_id"], task["method"], worker.index)
            worker.kill("timeout", task)

    # ---- outcomes --------------------------------------------------------------------------------

    def _on_worker(self, worker: Worker) -> None:
        received = worker.receive()
        if received is None:
            self._replace(worker)
        else:
            ended, busy_s, size = received
            if worker.progress:
                self.progress += worker.progress
                worker.progress.clear()
            if not ended:
                return
            self._measured(busy_s, len(ended))
            worker.done += len(ended)
            for task, outcome in ended:
                self._deliver(task, outcome, size)
            if worker.idle and self._worn_out(worker):
                self._recycle(worker)
        self.dispatch()

    def _worn_out(self, worker: Worker) -> bool:
        """Whether the worker ran ``max_tasks_per_worker`` tasks, or grew past ``max_memory_per_worker``
        (its RSS, read from /proc at most once a second)."""
        if self.max_tasks_per_worker is not None and worker.done >= self.max_tasks_per_worker:
            return True
        if self.max_memory_per_worker is None:
            return False
        now = time.monotonic()
        if now - worker.memory_checked_at < 1.0:
            return False
        worker.memory_checked_at = now
        return worker.rss_bytes() > self.max_memory_per_worker

    def _recycle(self, worker: Worker) -> None:
        """Replace an idle worker with a fresh process: nothing it held is lost, since it holds nothing."""
        log.info("worker %d recycled after %d task(s)", worker.index, worker.done)
        self._server.remove_socket(worker.fileno())
        worker.stop()
        self.workers[worker.index] = self._start_worker(worker.index)

    def _replace(self, worker: Worker) -> None:
        """A worker died: report the tasks it was running, unless the node killed it on purpose or they
        were revoked; put the rest of what it held back in the queue (the tasks that had ended too, if
        their outcomes had not arrived: at least once); start another worker in its place."""
        worker.process.join(1.0)
        code = worker.process.exitcode
        reason = worker.kill_reason
        running = set(worker.started())  # before stop(), which unmaps the memory that says which
        self._server.remove_socket(worker.fileno())
        worker.stop()
        held = list(worker.in_flight.items())
        worker.in_flight.clear()
        again = []
        for slot, task in held:
            self._cancel_limit(task)
            self._unhand(task["task_id"])
            if reason == "shutdown" or task["task_id"] in worker.revoked:
                continue
            if slot not in running or reason == "revoked" or (reason == "timeout" and task is not worker.overdue):
                again.append(task)  # it had not started, or was stopped for another task's sake
            elif reason == "timeout":
                self._fail(task, TimeLimitExceeded(time_limit_message(task, self._time_limit(task))))
            else:
                log.error("worker %d died running %s (exit code %s)", worker.index, task["method"], code)
                self._fail(task, WorkerLost(f"the worker running {task['method']} died (exit code {code})"))
        if reason != "shutdown":
            self.pending.extendleft(reversed(again))
            self.workers[worker.index] = self._start_worker(worker.index)
