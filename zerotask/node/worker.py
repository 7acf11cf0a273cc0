"""Worker: one process that runs its node's tasks one at a time.

A worker is forked by its node and talks to it over a pipe, not ZeroMQ: a ZeroMQ context must not
cross a fork, and a pipe is all one process needs to hear from its parent. The node sends tasks as
a JSON array (a batch: several at once when many are waiting); the worker answers with
``{"busy_s", "outcomes"}``: the outcomes (``{"task_id", "result"}`` or ``{"task_id", "error"}``, or
``null`` for a task it passed over) of the tasks it ran since its last answer, in order, at least every
millisecond, and the time it spent on them. Forking (rather than spawning) keeps the tasks a script
registered before ``Node().start()``, as the seed's examples do.

The node and the worker also share a few bytes of memory, mapped before the fork, so that what each
must know of the other's progress within a batch costs no message and no system call per task:

- before it starts the task at position ``p`` of its batch, the worker writes ``p``. When the worker
  dies, the node reads which task was running: the tasks before it ended (their outcomes may not have
  been sent yet), the tasks after it never started.
- the node marks the position of a task it revokes while the task waits in the batch; the worker,
  reaching a marked task, passes over it.

The worker writes the position and then reads the mark; the node writes the mark and then reads the
position. With no memory fence on either side, both reads can still miss the other's write when the
two happen at the same instant (the worker then runs the revoked task), so the node looks again a
moment later and kills the worker if it runs it (see :meth:`zerotask.node.pool.WorkerPool.revoke`).
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from zerotask import jsonrpc, tracing, wire
from zerotask.task import Dispatcher

log = logging.getLogger(__name__)

_fork = multiprocessing.get_context("fork")
FLUSH_S = 0.001  # the longest a finished task's outcome waits in the worker for others to join it
MAX_BATCH = 64  # tasks per hand-off at most

# The shared bytes: a revoked mark per position in the batch, then the position of the task started last.
_POSITION = MAX_BATCH
_NOT_STARTED = 255  # at _POSITION (above any position): no task of the current batch has started
_NO_MARKS = bytes(MAX_BATCH)


class Worker:
    """The node's handle on one worker process."""

    def __init__(self, dispatcher: Dispatcher, index: int, siblings: list[Connection] | None = None) -> None:
        """Fork the process. ``siblings``: the node's ends of the other workers' pipes, which the child
        closes so that each pipe reaches end-of-file as soon as the node lets go of it."""
        self.index = index
        self.connection, child_end = _fork.Pipe(duplex=True)
        self._shared = mmap.mmap(-1, MAX_BATCH + 1)  # anonymous and MAP_SHARED: the child writes to the same bytes
        self._shared[_POSITION] = _NOT_STARTED
        inherited = [self.connection, *(siblings or [])]
        self.process = _fork.Process(
            target=_run,
            args=(child_end, inherited, self._shared, dispatcher),
            name=f"zerotask-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.batch: deque[dict[str, Any]] = deque()  # handed over, no outcome yet
        self._handed = 0  # the size of the current batch: batch[0] is at position _handed - len(batch)
        self.kill_reason: str | None = None  # why the node killed it: "timeout", "revoked", "shutdown"
        self.revoked: set[str] = set()  # ids of tasks of the current batch that were revoked

    def fileno(self) -> int:
        return self.connection.fileno()

    @property
    def idle(self) -> bool:
        return not self.batch

    @property
    def task(self) -> dict[str, Any] | None:
        """The first task of its batch without an outcome, if any: the one running when the batch is a
        single task (as a task with a time limit always is)."""
        return self.batch[0] if self.batch else None

    def run(self, tasks: list[dict[str, Any]]) -> None:
        """Hand over a batch of at most MAX_BATCH tasks, when idle, to run one after the other; their
        outcomes come back in order. If the process has died, the batch waits for :meth:`receive` to
        say so."""
        # The process is idle: it wrote its last position before sending the outcomes that made it so.
        self._shared[_POSITION] = _NOT_STARTED
        if self.revoked:
            self._shared[:MAX_BATCH] = _NO_MARKS
            self.revoked.clear()
        self._handed = len(tasks)
        self.batch.extend(tasks)
        try:
            self.connection.send_bytes(jsonrpc.dumps(tasks))
        except OSError:
            pass  # it died idle: its pipe is at end-of-file, which the node hears about next

    def receive(self) -> tuple[list[tuple[dict[str, Any], dict[str, Any] | None]], float, int] | None:
        """``([(task, outcome), ...], seconds the worker spent on them, size in bytes)`` for the tasks that
        just ended, in order (outcome None for a revoked task it passed over); None if the worker died
        (its batch is left as it was: :meth:`running` says which task of it was running)."""
        try:
            encoded = self.connection.recv_bytes()
        except (EOFError, OSError):
            return None
        report = jsonrpc.loads(encoded)
        outcomes: list[dict[str, Any] | None] = report["outcomes"]
        return [(self.batch.popleft(), outcome) for outcome in outcomes], float(report["busy_s"]), len(encoded)

    def running(self) -> dict[str, Any] | None:
        """The task of its batch that the process started last and has not reported: the one it runs (or
        has just ended, or was killed in). None if it has started none of them yet, or is between two."""
        if not self.batch or self._shared.closed:
            return None
        first = self._handed - len(self.batch)
        position = self._shared[_POSITION]
        if not first <= position < self._handed:  # _NOT_STARTED, or the outcome of that task is in
            return None
        return self.batch[position - first]

    def revoke(self, task_ids: set[str]) -> bool:
        """Mark the tasks of its batch whose ids are in ``task_ids``, so that the process passes over them
        if it has not started them. Returns whether its batch held any; :meth:`runs_revoked` then says
        whether the process had started one, which only killing it stops."""
        first = self._handed - len(self.batch)
        marked = False
        for offset, task in enumerate(self.batch):
            if task["task_id"] in task_ids:
                self.revoked.add(task["task_id"])
                self._shared[first + offset] = 1
                marked = True
        return marked

    def runs_revoked(self) -> bool:
        """Whether the task it runs is one that was revoked."""
        running = self.running()
        return running is not None and running["task_id"] in self.revoked

    def kill(self, reason: str) -> None:
        """SIGKILL the process (a running task cannot be interrupted any other way); the node learns of
        its death from the pipe, and ``reason`` says what to report."""
        self.kill_reason = reason
        if self.process.is_alive():
            self.process.kill()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Close the pipe and end the process (SIGTERM, then SIGKILL after ``timeout_s``).

        Closing alone is not enough: workers forked later hold copies of this pipe's node end.
        """
        self.connection.close()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        self._shared.close()


def _run(connection: Connection, inherited: list[Connection], shared: mmap.mmap, dispatcher: Dispatcher) -> None:
    """The worker process's loop: read a batch, run its tasks, send their outcomes, until the pipe closes."""
    for node_end in inherited:
        node_end.close()
    # The node owns signals: Ctrl-C reaches the whole process group, and the node decides what a
    # running task gets. The wakeup fd inherited from the node must not be written to from here.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    at = _POSITION
    while True:
        try:
            tasks = jsonrpc.loads(connection.recv_bytes())
        except (EOFError, OSError):
            break
        # Outcomes go back together at the end of the batch, or every FLUSH_S while a batch runs long,
        # so the node hears about finished tasks promptly without a message per task.
        finished: list[bytes] = []
        last_flush = time.monotonic()
        for position, task in enumerate(tasks):
            shared[at] = position  # first the position, then the mark: see the module docstring
            if shared[position]:
                finished.append(b"null")  # revoked while it waited: the broker has recorded that already
            else:
                finished.append(_execute(dispatcher, task))
            now = time.monotonic()
            if now - last_flush >= FLUSH_S:
                connection.send_bytes(_report(finished, now - last_flush))
                finished, last_flush = [], now
        if finished:
            connection.send_bytes(_report(finished, time.monotonic() - last_flush))
    os._exit(0)  # no atexit handlers or finalizers inherited from the node


def _report(outcomes: list[bytes], busy_s: float) -> bytes:
    """``{"busy_s": seconds spent on these tasks, "outcomes": [...]}``: the node learns from busy_s how
    long a task takes when it is running, not when it waits for a CPU."""
    return b'{"busy_s":%f,"outcomes":[%b]}' % (busy_s, b",".join(outcomes))


def _execute(dispatcher: Dispatcher, task: dict[str, Any]) -> bytes:
    """Run one task and return its encoded outcome. Never raises for anything the task does: what it
    raises (BaseException included) and a result that is not JSON are the task's error."""
    task_id = task.get("task_id")
    attempt = task.get("attempt")
    traceparent = task.get("traceparent")
    run = dispatcher.run if traceparent is None else tracing.in_trace(traceparent, dispatcher.run)
    result, error = run(task["method"], task.get("args", []), task.get("kwargs", {}), attempt if type(attempt) is int else 0)
    if error is None:
        try:
            encoded = jsonrpc.dumps({"task_id": task_id, "result": result})
            if jsonrpc.deeper_than(encoded, result, jsonrpc.MAX_DEPTH):
                # The broker wraps a result in a few more levels, and orjson cannot write very deep JSON.
                raise TypeError(f"it nests more than {jsonrpc.MAX_DEPTH} levels deep")
            return encoded
        except TypeError as problem:  # orjson's JSONEncodeError too: a lone surrogate, a huge int, an object...
            message = f"the result of {task['method']} is not JSON: {problem}"
            error = jsonrpc.error_object(
                wire.TASK_FAILED, f"TypeError: {message}", {"type": "TypeError", "message": message, "traceback": ""}
            )
    return jsonrpc.dumps({"task_id": task_id, "error": error})
