"""Worker: the node's handle on one worker process, which runs its tasks (code in :mod:`zerotask.node.child`).

A worker is forked by its node and talks to it over two pipes, not ZeroMQ: a ZeroMQ context must not
cross a fork, and a pipe each way is all one process needs to hear from its parent. (Not one socket
pair either: a read from one end of a socket pair wakes whoever waits to read at the other, so each
outcome the node read woke the idle worker, for nothing.) Forking (rather than spawning) keeps the
tasks a script registered before ``Node().start()``, as the seed's examples do.

Every task handed over takes a *slot* (a small number, free again once its outcome is back). The node
sends a batch of sync tasks ``{"tasks": [...]}`` only to an idle worker, which runs them one after the
other in slots 0, 1, 2...; or async tasks ``{"slots": [...], "tasks": [...]}``, which the worker starts
at once on its event loop, up to ``concurrency`` at a time, while it runs no sync batch. The worker
answers ``{"busy_s", "outcomes"}`` for a sync batch, in order, and ``{"busy_s", "slots", "outcomes"}``
for async tasks, as they end: the outcomes (``{"task_id", "result"}`` or ``{"task_id", "error"}``, or
``null`` for a task it passed over or that was cancelled) of the tasks that ended since its last
answer, at least every millisecond while a batch runs, with the seconds it spent on them.
``{"cancel": [slot, ...]}`` cancels running async tasks.

The node and the worker also share a few bytes of memory, mapped before the fork, so that what each
must know of the other's progress costs no message and no system call per task:

- the worker writes a slot's state: STARTED before it starts the task, DONE once it has ended. When
  the worker dies, the node reads which tasks were running (STARTED): the ones blamed. A task DONE
  whose outcome had not arrived, or NOT_STARTED, runs again.
- the node marks the slot of a task it revokes; the worker, starting a marked task, passes over it.

The worker writes the state and then reads the mark; the node writes the mark and then reads the
state. With no memory fence on either side, both reads can still miss the other's write when the
two happen at the same instant (the worker then runs the revoked task), so the node looks again a
moment later (see :meth:`zerotask.node.pool.WorkerPool.revoke`). A revoked sync task that runs can be
stopped only by killing the worker; a revoked async task is cancelled, and the worker serves on.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from zerotask import jsonrpc
from zerotask.node import frames
from zerotask.node.child import MAX_BATCH, STARTED, serve
from zerotask.task import Dispatcher

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
log = logging.getLogger(__name__)

_fork = multiprocessing.get_context("fork")
_ZEROS = bytes(MAX_BATCH)
PIPE_BYTES = 256 * 1024  # what a pipe holds before a write waits for the reader: a socket pair's 208 KiB here
Task = dict[str, Any]
_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only


def _pipe() -> tuple[Connection, Connection]:
    """A one-way pipe, ``(read end, write end)``, holding PIPE_BYTES where the system allows it."""
    reader, writer = _fork.Pipe(duplex=False)
    if _SET_PIPE_SIZE is not None:
        try:
            fcntl.fcntl(writer.fileno(), _SET_PIPE_SIZE, PIPE_BYTES)
        except OSError:  # the user's pipes are over their limit: the default size (64 KiB)
            pass
    return reader, writer


class Worker:
    """The node's handle on one worker process."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        index: int,
        siblings: list[Connection] | None = None,
        concurrency: int = 1,
        default_time_limit_s: float | None = None,
    ) -> None:
        """Fork the process. ``siblings``: the node's ends of the other workers' pipes (their
        :meth:`node_ends`), which the child closes so that each pipe reaches end-of-file as soon as the
        node lets go of it. ``concurrency``: async tasks at once at most. ``default_time_limit_s``: the
        limit of async tasks with none."""
        self.index = index
        self.concurrency = concurrency
        tasks_reader, self.connection = _pipe()  # node -> worker: closing it lets the process go
        self._outcomes, outcomes_writer = _pipe()  # worker -> node: what the node polls
        self._slots = max(MAX_BATCH, concurrency)
        self._shared = mmap.mmap(-1, 2 * self._slots)  # anonymous and MAP_SHARED: the child writes to the same bytes
        inherited = [*self.node_ends(), *(siblings or [])]
        self.process = _fork.Process(
            target=serve,
            args=(tasks_reader, outcomes_writer, inherited, self._shared, self._slots, dispatcher, default_time_limit_s),
            name=f"zerotask-worker-{index}",
            daemon=True,
        )
        self.process.start()
        tasks_reader.close()
        outcomes_writer.close()
        self.in_flight: dict[int, Task] = {}  # slot -> task handed over, no outcome yet
        self._free = list(range(self._slots - 1, -1, -1))  # for async tasks: a sync batch runs alone in 0, 1...
        self._next = 0  # the slot of the next outcome of a sync batch
        self._sync = False  # whether what it holds is a sync batch: then it takes nothing more
        self.kill_reason: str | None = None  # why the node killed it: "timeout", "revoked", "shutdown"
        self.overdue: Task | None = None  # the task whose time limit it was killed for
        self.revoked: set[str] = set()  # ids of tasks it holds that were revoked
        self.progress: list[dict[str, Any]] = []  # what its running tasks reported, for the node to send on
        self.done = 0  # tasks it ended (recycling counts them)
        self.memory_checked_at = 0.0  # time.monotonic() of its last RSS reading

    def fileno(self) -> int:
        return self._outcomes.fileno()

    def node_ends(self) -> list[Connection]:
        """The node's ends of the pipes: the tasks' write end, the outcomes' read end."""
        return [self.connection, self._outcomes]

    @property
    def idle(self) -> bool:
        return not self.in_flight

    def room(self) -> int:
        """How many async tasks it may be handed now (none while it runs a sync batch or is being killed)."""
        if self._sync or self.kill_reason is not None:
            return 0
        return self.concurrency - len(self.in_flight)

    def run(self, tasks: list[Task], sync: bool) -> Sequence[int]:
        """Hand over tasks: a sync batch of at most MAX_BATCH (only when idle), run one after the other,
        or async tasks (at most :meth:`room`), started at once; returns their slots. If the process has
        died, they wait for :meth:`receive` to say so."""
        shared, states = self._shared, self._slots
        self._sync = sync
        if sync:  # the process is idle: it sent the outcomes of every slot
            count = len(tasks)
            shared[:count] = shared[states : states + count] = _ZEROS[:count]
            self.in_flight = dict(enumerate(tasks))
            self._next = 0
            self._send({"tasks": tasks})
            return range(count)
        slots = []
        for task in tasks:
            slot = self._free.pop()
            shared[slot] = shared[states + slot] = 0
            self.in_flight[slot] = task
            slots.append(slot)
        self._send({"slots": slots, "tasks": tasks})
        return slots

    def cancel(self, slots: list[int]) -> None:
        """Cancel running async tasks (their outcomes come back as null)."""
        self._send({"cancel": slots})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            frames.write(self.connection.fileno(), jsonrpc.dumps(message))
        except OSError:
            pass  # it died: its pipe is at end-of-file, which the node hears about next

    def receive(self) -> tuple[list[tuple[Task, dict[str, Any] | None]], float, int] | None:
        """``([(task, outcome), ...], seconds the worker spent on them, size in bytes)`` for the tasks that
        just ended (outcome None for a revoked task: passed over, cancelled, or run anyway); None if the
        worker died (what it held is left as it was: :meth:`started` says what was running)."""
        try:
            encoded = frames.read(self._outcomes.fileno())
        except (EOFError, OSError):
            return None
        report = jsonrpc.loads(encoded)
        if "progress" in report:  # a running task said how far it got: no task ended
            self.progress.extend(report["progress"])
            return [], 0.0, len(encoded)
        outcomes: list[dict[str, Any] | None] = report["outcomes"]
        in_flight = self.in_flight
        if "slots" in report:  # async tasks, in the order they ended
            ended = [(in_flight.pop(slot), outcome) for slot, outcome in zip(report["slots"], outcomes, strict=True)]
            self._free.extend(report["slots"])
        else:  # a sync batch, in order
            ended = [(in_flight.pop(position), outcome) for position, outcome in enumerate(outcomes, self._next)]
            self._next += len(outcomes)
        if self.revoked:
            ended = [(task, None if task["task_id"] in self.revoked else outcome) for task, outcome in ended]
            self.revoked.difference_update(task["task_id"] for task, _ in ended)
        if not in_flight:
            self._sync = False
        return ended, float(report["busy_s"]), len(encoded)

    def runs(self, slot: int) -> bool:
        """Whether the process has started the task in ``slot`` and not ended it."""
        return not self._shared.closed and self._shared[self._slots + slot] == STARTED

    def started(self) -> list[int]:
        """The slots of the tasks it runs (or has just ended, or was killed in): the ones a death blames."""
        return [slot for slot in self.in_flight if self.runs(slot)]

    def revoke(self, task_ids: set[str]) -> list[int]:
        """Mark the tasks it holds whose ids are in ``task_ids``, so that the process passes over them if
        it has not started them; returns their slots (:meth:`runs` then says which it had started)."""
        marked = []
        for slot, task in self.in_flight.items():
            if task["task_id"] in task_ids:
                self.revoked.add(task["task_id"])
                self._shared[slot] = 1
                marked.append(slot)
        return marked

    def kill(self, reason: str, overdue: Task | None = None) -> None:
        """SIGKILL the process (a running sync task cannot be interrupted any other way); the node learns
        of its death from the pipe, and ``reason`` (and ``overdue``, for "timeout") say what to report."""
        self.kill_reason = reason
        self.overdue = overdue
        if self.process.is_alive():
            self.process.kill()

    def rss_bytes(self) -> int:
        """The process's resident memory, from /proc (0 where there is none to read)."""
        try:
            with open(f"/proc/{self.process.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE_BYTES
        except (OSError, ValueError, IndexError):
            return 0

    def stop(self, timeout_s: float = 2.0) -> None:
        """Close the pipes and end the process (SIGTERM, then SIGKILL after ``timeout_s``).

        Closing alone is not enough: workers forked later hold copies of the pipes' node ends.
        """
        self.connection.close()
        self._outcomes.close()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        self._shared.close()
