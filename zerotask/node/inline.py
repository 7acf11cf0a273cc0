"""Which sync tasks a thread pool runs in the node's own loop thread: those this node has seen to be short.

Handing a task to a pool thread and taking its outcome back costs two wake-ups, two hand-overs of the GIL
and an eventfd write: over 4,000 blocking ``add`` calls the node's process used 185-237 µs of CPU a call
that way, 100-135 µs with the task run in the loop. But the loop must never be blocked for long: it keeps
the heartbeats that tell the broker the node is alive (miss ``--liveness`` of them and the broker runs the
node's tasks again elsewhere), and it fires time limits. So a task runs in the loop only when all of this
holds (see :meth:`zerotask.node.threads.ThreadPool.dispatch`):

- it is a sync task with no time limit at all (its own, its ``@task`` option's or the node's): a limit must
  be answered at the limit, which a loop busy running the task could not do;
- its last ``needed`` runs in this node (INLINE_AFTER at first) each took under INLINE_MAX_S;
- it is the only task waiting, and a pool thread is idle: it takes that thread's place, so no more
  tasks run at once than ``--workers`` says.

A run over INLINE_MAX_S, in a thread or in the loop, starts the count again; a task that was running in the
loop and turns out slow needs twice as many short runs in a row to come back (32, 64, 128...), so one that
blocks now and then comes back ever more rarely, while one slowed down once by a busy machine is not lost
for good. What this cannot see coming is the first long run of a task that was always short: it blocks the
loop for as long as it runs. Give a task that may block a time limit: it then always runs in a thread.
"""

from __future__ import annotations

INLINE_MAX_S = 0.001  # a run this long or longer sends the task back to the threads
INLINE_AFTER = 32  # short runs in a row before a task first runs in the loop
MAX_NAMES = 10_000  # task names followed at most: a broker that sends made-up names grows nothing


class ShortTasks:
    """Per task name, how many of its latest runs in a row were short, and how many it needs."""

    def __init__(self) -> None:
        self._streaks: dict[str, int] = {}
        self._needed: dict[str, int] = {}

    def short(self, method: str) -> bool:
        """Whether ``method`` has been short for long enough to run in the loop."""
        return self._streaks.get(method, 0) >= self._needed.get(method, INLINE_AFTER)

    def ran(self, method: str, seconds: float) -> None:
        """A run of ``method`` took ``seconds`` (wall clock: a task that sleeps or waits uses no CPU)."""
        streak = self._streaks.get(method)
        if streak is None and len(self._streaks) >= MAX_NAMES:
            return
        if seconds < INLINE_MAX_S:
            self._streaks[method] = (streak or 0) + 1
            return
        needed = self._needed.get(method, INLINE_AFTER)
        if (streak or 0) >= needed:
            self._needed[method] = needed * 2
        self._streaks[method] = 0
