"""ThreadPool: tasks run in threads of the node's own process (``zerotask node --pool thread``).

For I/O-bound tasks and the lowest latency. A hand-off is a deque and a write to an idle thread's
eventfd (:class:`Inbox`); an outcome comes back through a deque and an eventfd (a pipe where there is
none) that the node's loop polls, written only when the loop has not already been woken, so outcomes
that end together cost one wake-up.
Sync tasks go to the threads, in batches as for processes; ``async def`` tasks to one event loop in a
thread of its own, up to ``slots`` (``count`` times ``concurrency``) at once.

**Short tasks run in the node's loop.** A sync task with no time limit whose last 32 runs in this node
each took under a millisecond, arriving alone while a thread is idle, runs in the node's loop thread
itself (``threading.current_thread()`` is then the main thread), sparing the hand-off and its wake-ups.
A run over the millisecond sends the task's next calls back to the threads. The rule, and what it
cannot foresee, are in :mod:`zerotask.node.inline`; a task that may block should have a time limit.

What threads cannot do, and what the pool does instead:

- **Time limits**: a thread cannot be killed. At its limit a sync task is reported failed with
  ``TimeLimitExceeded`` (or retried, as its policy says), so its caller is answered at the limit; its
  thread is abandoned: it runs on until the task returns, the outcome is then discarded and the thread
  ends. A new thread takes its place while no more than ``count`` threads are abandoned at once; beyond
  that the pool runs short of threads until one returns. An async task is cancelled at its limit; one
  that blocks the event loop is reported failed ASYNC_LIMIT_MARGIN_S later, but blocks every async task
  of the pool until it returns.
- **Crashes**: an exception is the task's error, as in a process. A task that ends the process
  (``os._exit``, a segfault in C code) ends the node, which the broker sees as a lost node: its tasks
  run again elsewhere. Use the process pool for isolation.
- **Revoke**: a task that has not started is dropped. A running sync task cannot be stopped: it runs
  on and its outcome is discarded (the broker has recorded REVOKED). A running async task is cancelled.
  (A task run in the loop ends before the loop reads the next message: a revoke finds it done.)
- **Drain** (SIGTERM): as for processes. Tasks still running when the grace period ends are left to
  their threads, which die with the process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from zerotask.exceptions import TimeLimitExceeded
from zerotask.node.aio import ASYNC_LIMIT_MARGIN_S, AsyncTasks
from zerotask.node.base import BasePool
from zerotask.node.inbox import ONE, Inbox, wake_pair
from zerotask.node.inline import ShortTasks
from zerotask.node.outcome import Outcome, Task, execute, time_limit_message

log = logging.getLogger(__name__)

JOIN_S = 1.0  # how long stop() waits for idle threads to end


class PoolThread:
    """The pool's handle on one of its threads."""

    def __init__(self, name: str, serve: Callable[[PoolThread], None]) -> None:
        self.inbox = Inbox()
        self.batch: deque[Task] = deque()  # handed over, no outcome yet (the node's loop alone touches it)
        self.abandoned = False  # past a time limit (or the grace period): its outcomes are discarded
        self.thread = threading.Thread(target=serve, args=(self,), name=name, daemon=True)
        self.thread.start()

    @property
    def idle(self) -> bool:
        return not self.batch


class ThreadPool(BasePool):
    """``count`` threads and, for async tasks, one event loop, fed from local queues."""

    workers: list[PoolThread]

    def start(self) -> None:
        self.workers = []
        self._abandoned: list[PoolThread] = []
        self._names = itertools.count()
        self._waiting_async: deque[Task] = deque()
        self._revoked: set[str] = set()  # ids of tasks handed over and revoked: their outcomes are discarded
        self._ended: deque[tuple[PoolThread, Outcome | None, int, float]] = deque()  # filled by the threads
        self._async_ended: deque[tuple[int, Outcome | None, int, float]] = deque()  # by the event loop
        self._progress_inbox: deque[dict[str, Any]] = deque()  # report_progress, from threads and the loop
        self._running_async: dict[int, Task] = {}
        self._shorts = ShortTasks()  # which sync tasks have been short enough to run in the node's loop
        self._keys = itertools.count()
        self._aio: AsyncTasks | None = None
        self._loop_thread: threading.Thread | None = None
        self._signalled = False
        self._wake_lock = threading.Lock()
        self._wake_reader, self._wake_writer = wake_pair()
        self._server.add_socket(self._wake_reader, self._on_wake)
        self._top_up()

    def stop(self) -> None:
        for runner in self.workers:
            runner.inbox.put(None)
        if self._aio is not None:
            asyncio.run_coroutine_threadsafe(self._close_loop(self._aio), self._aio.loop)
        deadline = time.monotonic() + JOIN_S
        for thread in [runner.thread for runner in self.workers] + ([self._loop_thread] if self._loop_thread else []):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._aio is not None and self._loop_thread is not None and not self._loop_thread.is_alive():
            self._aio.loop.close()
        self._server.remove_socket(self._wake_reader)
        with self._wake_lock:  # a thread still running must never write to a closed (or reused) descriptor
            os.close(self._wake_reader)
            if self._wake_writer != self._wake_reader:
                os.close(self._wake_writer)
            self._wake_writer = -1
        self.workers = []

    @staticmethod
    async def _close_loop(aio: AsyncTasks) -> None:
        aio.cancel_all()
        await aio.idle()
        aio.loop.stop()

    def _top_up(self) -> None:
        """Start threads until there are ``count``, while no more than ``count`` are abandoned."""
        while len(self.workers) < self.count and len(self._abandoned) <= self.count:
            self.workers.append(PoolThread(f"zerotask-thread-{next(self._names)}", self._serve))

    # ---- in a pool thread ------------------------------------------------------------------------

    def _serve(self, runner: PoolThread) -> None:
        try:
            self._serve_tasks(runner)
        finally:
            runner.inbox.close()

    def _serve_tasks(self, runner: PoolThread) -> None:
        dispatcher, revoked, ended, wake, receive = self._dispatcher, self._revoked, self._ended, self._wake, runner.inbox.get
        while not runner.abandoned:
            tasks = receive()
            if tasks is None:
                return
            before = time.monotonic()
            for task in tasks:
                if task["task_id"] in revoked:
                    ended.append((runner, None, 0, 0.0))
                else:
                    outcome, encoded = execute(dispatcher, task, self._report_progress)
                    now = time.monotonic()
                    ended.append((runner, outcome, len(encoded), now - before))
                    before = now
                wake()

    def _wake(self) -> None:
        """Make the node's loop look at the outcomes, unless it has been woken and not yet looked (a
        thread or the event loop may call this)."""
        if not self._signalled:
            self._signalled = True
            with self._wake_lock:
                if self._wake_writer >= 0:
                    try:
                        os.write(self._wake_writer, ONE)
                    except BlockingIOError:
                        pass  # a full pipe wakes the loop anyway

    def _report_progress(self, report: dict[str, Any]) -> None:
        """What a running task said of how far it got (from its thread, or the event loop): to the node."""
        self._progress_inbox.append(report)
        self._wake()

    def _async_done(self, key: int, outcome: Outcome | None, encoded: bytes, seconds: float) -> None:
        self._async_ended.append((key, outcome, len(encoded), seconds))
        self._wake()

    # ---- in the node's loop ----------------------------------------------------------------------

    @property
    def held(self) -> int:
        in_threads = sum(len(runner.batch) for runner in self.workers)
        return len(self.pending) + len(self._waiting_async) + in_threads + len(self._running_async)

    @property
    def busy(self) -> bool:
        return bool(self._running_async) or any(runner.batch for runner in self.workers)

    def running_ids(self) -> list[str]:
        in_threads = [task["task_id"] for runner in self.workers for task in runner.batch]
        return in_threads + [task["task_id"] for task in self._running_async.values()]

    def add(self, tasks: list[Task]) -> None:
        self._signalled = True  # what ends from now on, collect() takes at the end of this round
        if not self._any_async:
            self.pending.extend(tasks)
        else:
            for task in tasks:
                (self._waiting_async if self._is_async(task) else self.pending).append(task)
        self.dispatch()

    def take_pending(self) -> list[str]:
        task_ids = super().take_pending() + [task["task_id"] for task in self._waiting_async]
        self._waiting_async.clear()
        return task_ids

    def revoke(self, task_ids: set[str]) -> None:
        """Drop revoked tasks that wait; discard the outcomes of those handed over (a thread passes over
        one it has not started); cancel running async ones."""
        self._forget_pending(task_ids)
        if any(task["task_id"] in task_ids for task in self._waiting_async):
            self._waiting_async = deque(task for task in self._waiting_async if task["task_id"] not in task_ids)
        for runner in self.workers:
            self._revoked.update(task["task_id"] for task in runner.batch if task["task_id"] in task_ids)
        for key, task in self._running_async.items():
            if task["task_id"] in task_ids and self._aio is not None:
                self._revoked.add(task["task_id"])
                self._aio.loop.call_soon_threadsafe(self._aio.cancel, key)

    def kill_busy(self) -> None:
        """The grace period is over: nothing is reported for what still runs (the threads die with the process)."""
        for runner in [runner for runner in self.workers if runner.batch]:
            self._abandon(runner)
        if self._aio is not None:
            self._aio.loop.call_soon_threadsafe(self._aio.cancel_all)
        self._running_async.clear()

    def dispatch(self) -> None:
        if len(self.pending) == 1 and self._runs_inline(self.pending[0]):
            self._run_inline(self.pending.popleft())
        elif self.pending:
            idle = [runner for runner in self.workers if runner.idle]
            for position, runner in enumerate(idle):
                if not self.pending:
                    break
                batch, limit = self._take_sync(min(self.batch_size, math.ceil(len(self.pending) / (len(idle) - position))))
                runner.batch.extend(batch)
                runner.inbox.put(batch)
                self._note_handed(batch, time.monotonic())
                if limit is not None:
                    timer = self._server.call_later(limit, functools.partial(self._time_up, runner, batch[0]))
                    self._limits[batch[0]["task_id"]] = timer
        if self._waiting_async and len(self._running_async) < self.slots:
            self._hand_async()

    def _runs_inline(self, task: Task) -> bool:
        """Whether to run ``task``, the only one waiting, here in the node's loop (see zerotask.node.inline)."""
        return (
            self._shorts.short(task["method"])
            and not ((self._any_limit or "time_limit_s" in task) and self._time_limit(task) is not None)
            and any(runner.idle for runner in self.workers)  # it takes an idle thread's place
        )

    def _run_inline(self, task: Task) -> None:
        started = time.monotonic()
        outcome, encoded = execute(self._dispatcher, task, self._report_progress)
        seconds = time.monotonic() - started
        self._shorts.ran(task["method"], seconds)
        self._measured(seconds, 1)
        self._deliver(task, outcome, len(encoded))

    def _hand_async(self) -> None:
        aio = self._async_tasks()
        items = []
        while self._waiting_async and len(self._running_async) < self.slots:
            task = self._waiting_async.popleft()
            key = next(self._keys)
            self._running_async[key] = task
            items.append((key, task))
            limit = self._time_limit(task)
            if limit is not None:  # it is cancelled at its limit; this is for one that blocks the event loop
                timer = self._server.call_later(limit + ASYNC_LIMIT_MARGIN_S, functools.partial(self._async_time_up, key, task))
                self._limits[task["task_id"]] = timer
        aio.loop.call_soon_threadsafe(aio.start_many, items)
        self._note_handed([task for _, task in items], time.monotonic())

    def _async_tasks(self) -> AsyncTasks:
        if self._aio is None:
            loop = asyncio.new_event_loop()
            self._aio = AsyncTasks(loop, self._dispatcher, self._async_done, self.default_time_limit_s, self._report_progress)
            self._loop_thread = threading.Thread(target=loop.run_forever, name="zerotask-async", daemon=True)
            self._loop_thread.start()
        return self._aio

    def _time_up(self, runner: PoolThread, task: Task) -> None:
        self._limits.pop(task["task_id"], None)
        if runner.abandoned or not runner.batch or runner.batch[0] is not task:
            return
        log.warning("task %s (%s) ran past its time limit: abandoning its thread", task["task_id"], task["method"])
        self._revoked.discard(task["task_id"])
        self._fail(task, TimeLimitExceeded(time_limit_message(task, self._time_limit(task))))
        self._abandon(runner)
        self._top_up()
        self.dispatch()

    def _abandon(self, runner: PoolThread) -> None:
        runner.abandoned = True
        runner.inbox.put(None)  # should it be back waiting already, its outcome on the way here
        self.workers.remove(runner)
        self._abandoned.append(runner)

    def _async_time_up(self, key: int, task: Task) -> None:
        self._limits.pop(task["task_id"], None)
        if self._running_async.pop(key, None) is task:  # its outcome, should it come, is discarded
            self._revoked.discard(task["task_id"])
            log.warning(
                "async task %s (%s) still runs past its time limit: is it blocking the event loop?",
                task["task_id"],
                task["method"],
            )
            self._fail(task, TimeLimitExceeded(time_limit_message(task, self._time_limit(task))))

    def collect(self) -> None:
        """Take what ended during this round of the node's loop, to be reported in it: a thread handed a
        task usually runs it at once, while the loop waits in its write to the thread's inbox, so the
        outcome is there before the round ends, and needs no wake-up and no round of its own."""
        self._signalled = False  # before taking the outcomes: one that arrives from now on wakes us again
        if self._ended or self._async_ended or self._progress_inbox:
            self._take()

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_reader, 4096)
        except BlockingIOError:
            pass
        self._signalled = False  # before taking the outcomes: one that arrives from now on wakes us again
        self._take()

    def _take(self) -> None:
        while self._progress_inbox:
            self.progress.append(self._progress_inbox.popleft())
        ended, revoked, busy_s, count = self._ended, self._revoked, 0.0, 0
        while ended:
            runner, outcome, size, seconds = ended.popleft()
            task = runner.batch.popleft()
            if outcome is not None:  # it ran (a revoked task passed over did not)
                self._shorts.ran(task["method"], seconds)
            busy_s += seconds
            count += 1
            if runner.abandoned:  # its task was failed at its time limit; the thread ends now
                if not runner.batch and runner in self._abandoned:
                    self._abandoned.remove(runner)
                    self._top_up()
                continue
            if revoked and task["task_id"] in revoked:
                revoked.discard(task["task_id"])
                outcome = None
            self._deliver(task, outcome, size)
        async_ended = self._async_ended
        while async_ended:
            key, outcome, size, seconds = async_ended.popleft()
            async_task = self._running_async.pop(key, None)
            busy_s += seconds
            count += 1
            if async_task is None:  # failed at its time limit, or the grace period is over
                continue
            if revoked and async_task["task_id"] in revoked:
                revoked.discard(async_task["task_id"])
                outcome = None
            self._deliver(async_task, outcome, size)
        if count:
            self._measured(busy_s, count)
        self.dispatch()
