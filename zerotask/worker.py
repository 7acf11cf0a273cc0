"""Worker: one process that runs one task at a time for its node.

A worker is forked by its node and talks to it over a pipe, not ZeroMQ: a ZeroMQ context must not
cross a fork, and a pipe is all one process needs to hear from its parent. The node sends a task as
JSON; the worker answers ``{"task_id", "result"}`` or ``{"task_id", "error"}``. Forking (rather than
spawning) keeps the tasks a script registered before ``Node().start()``, as the seed's examples do.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from zerotask import jsonrpc
from zerotask.dispatcher import Dispatcher

log = logging.getLogger(__name__)

_fork = multiprocessing.get_context("fork")


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
        self.task: dict[str, Any] | None = None  # the task it is running, if any
        self.started_at = 0.0
        self.kill_reason: str | None = None  # why the node killed it: "timeout", "revoked", "shutdown"

    def fileno(self) -> int:
        return self.connection.fileno()

    @property
    def idle(self) -> bool:
        return self.task is None

    def run(self, task: dict[str, Any]) -> None:
        self.task = task
        self.started_at = time.monotonic()
        self.connection.send_bytes(jsonrpc.dumps(task))

    def receive(self) -> tuple[dict[str, Any], int] | None:
        """The outcome of the running task and its size in bytes, or None if the worker died."""
        try:
            encoded = self.connection.recv_bytes()
        except (EOFError, OSError):
            return None
        self.task = None
        return jsonrpc.loads(encoded), len(encoded)

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
            task = jsonrpc.loads(connection.recv_bytes())
        except (EOFError, OSError):
            break
        connection.send_bytes(_execute(dispatcher, task))
    os._exit(0)  # no atexit handlers or finalizers inherited from the node


def _execute(dispatcher: Dispatcher, task: dict[str, Any]) -> bytes:
    task_id = task.get("task_id")
    result, error = dispatcher.run(task["method"], task.get("args", []), task.get("kwargs", {}))
    if error is not None:
        return jsonrpc.dumps({"task_id": task_id, "error": error})
    try:
        return jsonrpc.dumps({"task_id": task_id, "result": result})
    except TypeError as problem:
        message = f"the result of {task['method']} is not JSON: {problem}"
        error = jsonrpc.error_object(
            jsonrpc.TASK_FAILED, f"TypeError: {message}", {"type": "TypeError", "message": message, "traceback": ""}
        )
        return jsonrpc.dumps({"task_id": task_id, "error": error})
