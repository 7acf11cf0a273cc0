"""What runs in a worker process: read hand-offs from the node's pipe, run them, send the outcomes back.

The protocol and the shared memory are described in :mod:`zerotask.node.worker`, the node's side. Sync
tasks run one after the other in the process's main thread. Async tasks start on the process's event
loop (made at the first one), which the process drives while any of them runs, reading the pipe
meanwhile: more async tasks may arrive (up to the node's ``--concurrency`` at once), and cancellations.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from zerotask import jsonrpc
from zerotask.node import frames
from zerotask.node.aio import AsyncTasks
from zerotask.node.outcome import Outcome, Task, execute
from zerotask.task import Dispatcher

FLUSH_S = 0.001  # the longest a finished task's outcome waits in the worker for others to join it
MAX_BATCH = 64  # sync tasks per hand-off at most

# The shared bytes, for a worker with S slots: a revoked mark per slot (the node writes them), then a
# state per slot (the worker writes them).
NOT_STARTED, STARTED, DONE = 0, 1, 2


def serve(
    from_node: Connection,
    to_node: Connection,
    inherited: list[Connection],
    shared: mmap.mmap,
    slots: int,
    dispatcher: Dispatcher,
    default_time_limit_s: float | None,
) -> None:
    """The worker process's loop, until the node closes its end of ``from_node``."""
    for node_end in inherited:
        node_end.close()
    # The node owns signals: Ctrl-C reaches the whole process group, and the node decides what a
    # running task gets. The wakeup fd inherited from the node must not be written to from here.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child = _Child(from_node, to_node, shared, slots, dispatcher, default_time_limit_s)
    while True:
        try:
            message = frames.read(child.from_fd)
        except (EOFError, OSError):
            break
        child.handle(message)
        if child.aio is not None and len(child.aio):
            child.drive()
    os._exit(0)  # no atexit handlers or finalizers inherited from the node


class _Child:
    def __init__(
        self,
        from_node: Connection,
        to_node: Connection,
        shared: mmap.mmap,
        slots: int,
        dispatcher: Dispatcher,
        default_time_limit_s: float | None,
    ) -> None:
        # Held until the process exits (a Connection closes its descriptor when collected): the numbers stay theirs.
        self._pipes = (from_node, to_node)
        self.from_fd, self._to_fd = from_node.fileno(), to_node.fileno()
        self._shared = shared
        self._states = slots  # where the states start in the shared bytes
        self._dispatcher = dispatcher
        self._default_time_limit_s = default_time_limit_s
        self.aio: AsyncTasks | None = None
        self._slots: list[bytes] = []  # the slots and outcomes of async tasks ended since the last report
        self._outcomes: list[bytes] = []
        self._busy_s = 0.0
        self._flush_due = False

    def handle(self, message: bytes) -> None:
        """A sync batch ``{"tasks": [...]}`` (in slots 0, 1...: it comes only when nothing else runs),
        async tasks ``{"slots": [...], "tasks": [...]}``, or ``{"cancel": [slot, ...]}``."""
        order = jsonrpc.loads(message)
        if "cancel" in order:
            for slot in order["cancel"]:
                if self.aio is not None:
                    self.aio.cancel(slot)
        elif "slots" in order:
            aio = self._async()
            for slot, task in zip(order["slots"], order["tasks"], strict=True):
                self._shared[self._states + slot] = STARTED  # first the state, then the mark: see zerotask.node.worker
                if self._shared[slot]:
                    self._async_done(slot, None, b"null", 0.0)  # revoked while it waited: recorded already
                else:
                    aio.start(slot, task)
            if self._outcomes and not aio.loop.is_running():  # all passed over: no loop to flush them
                self._flush()
        else:
            self._run_sync(order["tasks"])

    def _run_sync(self, tasks: list[Task]) -> None:
        """Run a batch one task after the other; outcomes go back in order, together at the end or every
        FLUSH_S while it runs long, so the node hears promptly without a message per task."""
        shared, states, dispatcher = self._shared, self._states, self._dispatcher
        finished: list[bytes] = []
        last_flush = time.monotonic()
        for position, task in enumerate(tasks):
            shared[states + position] = STARTED  # first the state, then the mark: see zerotask.node.worker
            if shared[position]:
                finished.append(b"null")  # revoked while it waited: the broker has recorded that already
            else:
                finished.append(execute(dispatcher, task, self._report_progress)[1])
            shared[states + position] = DONE
            now = time.monotonic()
            if now - last_flush >= FLUSH_S:
                self._send(b'{"busy_s":%f,"outcomes":[%b]}' % (now - last_flush, b",".join(finished)))
                finished, last_flush = [], now
        if finished:
            self._send(b'{"busy_s":%f,"outcomes":[%b]}' % (time.monotonic() - last_flush, b",".join(finished)))

    def drive(self) -> None:
        """Run the event loop until no async task runs, handling what the pipe brings meanwhile."""
        assert self.aio is not None
        loop = self.aio.loop
        loop.add_reader(self.from_fd, self._readable)
        try:
            # idle() may return with a task running: one the pipe brought after the last ended, before
            # the waiter resumed.
            while len(self.aio):
                loop.run_until_complete(self.aio.idle())
        finally:
            loop.remove_reader(self.from_fd)
        if self._outcomes:
            self._flush()

    def _readable(self) -> None:
        try:
            message = frames.read(self.from_fd)
        except (EOFError, OSError):  # the node let go: nobody wants these outcomes
            assert self.aio is not None
            self.aio.loop.remove_reader(self.from_fd)
            self.aio.cancel_all()
            return
        self.handle(message)

    def _async(self) -> AsyncTasks:
        if self.aio is None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.aio = AsyncTasks(loop, self._dispatcher, self._async_done, self._default_time_limit_s, self._report_progress)
        return self.aio

    def _async_done(self, slot: int, outcome: Outcome | None, encoded: bytes, seconds: float) -> None:
        self._shared[self._states + slot] = DONE
        self._busy_s += seconds
        self._slots.append(b"%d" % slot)
        self._outcomes.append(encoded)
        if not self._flush_due:  # outcomes that end in the same round of the loop leave together
            self._flush_due = True
            assert self.aio is not None
            self.aio.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the async outcomes that ended, ``{"busy_s", "slots", "outcomes"}``: the node learns from
        busy_s how long a task takes when it runs, not when it waits for a CPU."""
        self._flush_due = False
        if not self._outcomes:
            return
        report = b'{"busy_s":%f,"slots":[%b],"outcomes":[%b]}' % (self._busy_s, b",".join(self._slots), b",".join(self._outcomes))
        self._slots, self._outcomes, self._busy_s = [], [], 0.0
        self._send(report)

    def _report_progress(self, report: dict[str, Any]) -> None:
        """What a running task said of how far it got (report_progress, throttled there): to the node now."""
        self._send(b'{"progress":[%b]}' % jsonrpc.dumps(report))

    def _send(self, report: bytes) -> None:
        try:
            frames.write(self._to_fd, report)
        except OSError:
            pass  # the node let go of the pipe: the process ends at the next read
