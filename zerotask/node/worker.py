"""Worker: one process that runs its node's tasks one at a time.

A worker is forked by its node and talks to it over a pipe, not ZeroMQ: a ZeroMQ context must not
cross a fork, and a pipe is all one process needs to hear from its parent. The node sends tasks as
a JSON array (several at once when many are waiting); the worker answers with
``{"busy_s", "outcomes"}``: the outcomes (``{"task_id", "result"}`` or ``{"task_id", "error"}``) of the tasks
it ran since its last answer, in order, at least every millisecond, and the time it spent on them. Forking (rather than
spawning) keeps the tasks a script registered before ``Node().start()``, as the seed's examples do.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.task import Dispatcher

log = logging.getLogger(__name__)

_fork = multiprocessing.get_context("fork")
FLUSH_S = 0.001  # the longest a finished task's outcome waits in the worker for others to join it


class Worker:
    """The node's handle on one worker process."""

    def __init__(self, dispatcher: Dispatcher, index: int, siblings: list[Connection] | None = None) -> None:
        """Fork the process. ``siblings``: the node's ends of the other workers' pipes, which the child
        closes so that each pipe reaches end-of-file as soon as the node lets go of it."""
        self.index = index
        self.connection, child_end = _fork.Pipe(duplex=True)
        inherited = [self.connection, *(siblings or [])]
        self.process = _fork.Process(
            target=_run, args=(child_end, inherited, dispatcher), name=f"zerotask-worker-{index}", daemon=True
        )
        self.process.start()
        child_end.close()
        self.batch: deque[dict[str, Any]] = deque()  # handed over, no outcome yet; the first is running
        self.kill_reason: str | None = None  # why the node killed it: "timeout", "revoked", "shutdown"
        self.revoked: set[str] = set()  # with kill_reason "revoked": the task ids that were

    def fileno(self) -> int:
        return self.connection.fileno()

    @property
    def idle(self) -> bool:
        return not self.batch

    @property
    def task(self) -> dict[str, Any] | None:
        """The task it is running (the first of its batch), if any."""
        return self.batch[0] if self.batch else None

    def run(self, tasks: list[dict[str, Any]]) -> None:
        """Hand over tasks to run one after the other; their outcomes come back one by one."""
        self.batch.extend(tasks)
        self.connection.send_bytes(jsonrpc.dumps(tasks))

    def receive(self) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], float, int] | None:
        """``([(task, outcome), ...], seconds the worker spent on them, size in bytes)`` for the tasks that
        just ended, in order; None if the worker died (its batch is left as it was: the first task in it
        was running)."""
        try:
            encoded = self.connection.recv_bytes()
        except (EOFError, OSError):
            return None
        report = jsonrpc.loads(encoded)
        outcomes: list[dict[str, Any]] = report["outcomes"]
        return [(self.batch.popleft(), outcome) for outcome in outcomes], float(report["busy_s"]), len(encoded)

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


def _run(connection: Connection, inherited: list[Connection], dispatcher: Dispatcher) -> None:
    """The worker process's loop: read a task, run it, send its outcome, until the pipe closes."""
    for node_end in inherited:
        node_end.close()
    # The node owns signals: Ctrl-C reaches the whole process group, and the node decides what a
    # running task gets. The wakeup fd inherited from the node must not be written to from here.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            tasks = jsonrpc.loads(connection.recv_bytes())
        except (EOFError, OSError):
            break
        # Outcomes go back together at the end of the batch, or every FLUSH_S while a batch runs long,
        # so the node hears about finished tasks promptly without a message per task.
        finished: list[bytes] = []
        last_flush = time.monotonic()
        for task in tasks:
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
    task_id = task.get("task_id")
    attempt = task.get("attempt")
    result, error = dispatcher.run(
        task["method"], task.get("args", []), task.get("kwargs", {}), attempt if type(attempt) is int else 0
    )
    if error is not None:
        return jsonrpc.dumps({"task_id": task_id, "error": error})
    try:
        encoded = jsonrpc.dumps({"task_id": task_id, "result": result})
        if jsonrpc.deeper_than(encoded, result, jsonrpc.MAX_DEPTH):
            # The broker wraps a result in a few more levels, and orjson cannot write very deep JSON.
            raise TypeError(f"it nests more than {jsonrpc.MAX_DEPTH} levels deep")
        return encoded
    except TypeError as problem:
        message = f"the result of {task['method']} is not JSON: {problem}"
        error = jsonrpc.error_object(
            wire.TASK_FAILED, f"TypeError: {message}", {"type": "TypeError", "message": message, "traceback": ""}
        )
        return jsonrpc.dumps({"task_id": task_id, "error": error})
