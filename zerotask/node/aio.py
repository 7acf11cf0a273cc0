"""AsyncTasks: ``async def`` tasks running at once on one asyncio event loop, each under its time limit.

A worker process drives one between hand-offs (:mod:`zerotask.node.child`); the thread pool runs one
in a thread of its own (:mod:`zerotask.node.threads`). Every method is called in the loop's thread.

A task past its time limit is cancelled where it awaits, and ends as ``TimeLimitExceeded`` (or a retry,
as its policy says); :meth:`AsyncTasks.cancel` (revoke) ends it with no outcome. Cancelling works only
at an ``await``: a task that blocks the loop (a sync sleep, a CPU-bound loop) holds up every task on
it until it returns, which is why the node keeps a hard limit of its own a little later
(ASYNC_LIMIT_MARGIN_S).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from zerotask import jsonrpc
from zerotask.exceptions import TimeLimitExceeded
from zerotask.node.outcome import Outcome, Task, execute_async, failure, time_limit_message, time_limit_s
from zerotask.progress import Sink
from zerotask.task import Dispatcher

ASYNC_LIMIT_MARGIN_S = 1.0  # after its limit, how long the node waits for an async task's outcome before acting
Done = Callable[[int, Outcome | None, bytes, float], None]


class AsyncTasks:
    """Runs async tasks on ``loop``; calls ``done(key, outcome, encoded, seconds)`` as each ends (outcome
    None and ``b"null"`` when it was cancelled), in the loop's thread. ``default_time_limit_s``: the
    limit of tasks that have none of their own."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dispatcher: Dispatcher,
        done: Done,
        default_time_limit_s: float | None,
        progress: Sink | None = None,
    ) -> None:
        self.loop = loop
        self._progress = progress
        self._dispatcher = dispatcher
        self._done = done
        self._default_time_limit_s = default_time_limit_s
        self._running: dict[int, asyncio.Task[None]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._running)

    def start(self, key: int, task: Task) -> None:
        """Start ``task`` under ``key`` (unique among the running ones)."""
        self._running[key] = self.loop.create_task(self._run(key, task))
        self._empty.clear()

    def start_many(self, items: list[tuple[int, Task]]) -> None:
        for key, task in items:
            self.start(key, task)

    def cancel(self, key: int) -> None:
        """Cancel the task under ``key``, if it still runs: it ends with no outcome."""
        running = self._running.get(key)
        if running is not None:
            running.cancel()

    def cancel_all(self) -> None:
        for running in list(self._running.values()):
            running.cancel()

    async def idle(self) -> None:
        """Return once no task runs."""
        await self._empty.wait()

    async def _run(self, key: int, task: Task) -> None:
        started = time.monotonic()
        limit_s = time_limit_s(self._dispatcher, task, self._default_time_limit_s)
        outcome: Outcome | None
        try:
            if limit_s is None:
                outcome, encoded = await execute_async(self._dispatcher, task, self._progress)
            else:
                async with asyncio.timeout(limit_s):
                    outcome, encoded = await execute_async(self._dispatcher, task, self._progress)
        except TimeoutError:  # only the limit's: execute_async never raises what the task raises
            outcome = failure(self._dispatcher, task, TimeLimitExceeded(time_limit_message(task, limit_s)))
            encoded = jsonrpc.dumps(outcome)
        except asyncio.CancelledError:  # revoked: the broker has recorded that already
            outcome, encoded = None, b"null"
        del self._running[key]
        if not self._running:
            self._empty.set()
        self._done(key, outcome, encoded, time.monotonic() - started)
