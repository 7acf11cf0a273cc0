"""Which pool a node runs: worker processes, threads, or both (``zerotask node --pool``, ``@task(pool=...)``).

A node runs a pool of its own kind (``--pool process``, the default, or ``--pool thread``) with
``--workers`` workers. When some of its tasks ask for the other kind (``@task(pool="thread")`` on a
process node, ``@task(pool="process")`` on a thread node), it runs a second, smaller pool of that kind
too, of ``min(--workers, CPU count)`` workers, and :class:`MixedPool` sends each task to the pool its
task asks for. A node whose tasks all ask for the other kind runs only that kind. The choice is made
from the tasks registered when the node is made.

``--concurrency N`` (async tasks at once per worker) counts only in a pool that has async tasks to run:
a pool of sync tasks asks the broker for one task per worker, whatever N is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from zerotask.loop import EventLoop
from zerotask.node.base import Idle, Pool, Report
from zerotask.node.outcome import Task
from zerotask.node.pool import WorkerPool
from zerotask.node.threads import ThreadPool
from zerotask.task import POOLS, Dispatcher, PoolKind

# Tasks a node may run at once: a node lists them when it reconnects, and the broker accepts at most
# 10,000 (zerotask.broker.node_protocol.MAX_RUNNING).
MAX_SLOTS = 10_000


def make_pool(
    kind: PoolKind,
    server: EventLoop,
    dispatcher: Dispatcher,
    workers: int,
    report: Report,
    default_time_limit_s: float | None = None,
    concurrency: int = 1,
) -> Pool:
    """The pool (or pools) for a node of ``kind`` with ``workers`` workers. Raises ValueError for an
    unknown kind, fewer than one worker or one async task at once, or more than MAX_SLOTS at once."""
    if kind not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}")
    if workers < 1 or concurrency < 1:
        raise ValueError("workers and concurrency must be at least 1")
    if workers * concurrency > MAX_SLOTS:
        raise ValueError(f"workers x concurrency must be at most {MAX_SLOTS:,}")
    other_kind: PoolKind = "thread" if kind == "process" else "process"
    tasks = dispatcher.tasks()
    others = {task.name for task in tasks if task.options.pool == other_kind}

    def make(made_kind: PoolKind, count: int, names: set[str]) -> Pool:
        serves_async = any(task.is_async for task in tasks if task.name in names)
        made = WorkerPool if made_kind == "process" else ThreadPool
        return made(server, dispatcher, count, report, default_time_limit_s, concurrency if serves_async else 1)

    if not others:
        return make(kind, workers, {task.name for task in tasks})
    if len(others) == len(tasks):
        return make(other_kind, workers, others)
    own = make(kind, workers, {task.name for task in tasks} - others)
    return MixedPool(own, make(other_kind, min(workers, os.cpu_count() or 1), others), others)


class MixedPool:
    """Two pools as one: tasks named in ``other_names`` go to ``other``, the rest to ``own``."""

    def __init__(self, own: Pool, other: Pool, other_names: set[str]) -> None:
        self.own = own
        self.other = other
        self._other_names = frozenset(other_names)
        self._pools = (own, other)

    @property
    def count(self) -> int:
        return self.own.count + self.other.count

    @property
    def slots(self) -> int:
        return self.own.slots + self.other.slots

    @property
    def service_s(self) -> float:
        """The shorter of the two pools' task times: the node's prefetch follows the faster kind."""
        return min(self.own.service_s, self.other.service_s)

    @property
    def max_outcome_bytes(self) -> int:
        return self.own.max_outcome_bytes

    @max_outcome_bytes.setter
    def max_outcome_bytes(self, limit: int) -> None:
        self.own.max_outcome_bytes = self.other.max_outcome_bytes = limit

    @property
    def workers(self) -> Sequence[Idle]:
        return [*self.own.workers, *self.other.workers]

    @property
    def held(self) -> int:
        return self.own.held + self.other.held

    @property
    def busy(self) -> bool:
        return self.own.busy or self.other.busy

    @property
    def batch_size(self) -> int:
        return self.own.batch_size

    def start(self) -> None:
        # Processes first: a worker forked while no pool thread runs inherits no lock a thread holds.
        first, second = (self.own, self.other) if isinstance(self.own, WorkerPool) else (self.other, self.own)
        first.start()
        second.start()

    def stop(self) -> None:
        for pool in self._pools:
            pool.stop()

    def add(self, tasks: list[Task]) -> None:
        others = [task for task in tasks if task.get("method") in self._other_names]
        if others:
            self.other.add(others)
            tasks = [task for task in tasks if task.get("method") not in self._other_names]
        if tasks:
            self.own.add(tasks)

    def collect(self) -> None:
        self.own.collect()
        self.other.collect()

    def take_pending(self) -> list[str]:
        return self.own.take_pending() + self.other.take_pending()

    def revoke(self, task_ids: set[str]) -> None:
        for pool in self._pools:
            pool.revoke(task_ids)

    def kill_busy(self) -> None:
        for pool in self._pools:
            pool.kill_busy()

    def running_ids(self) -> list[str]:
        return self.own.running_ids() + self.other.running_ids()

    def due_running(self) -> list[str]:
        return self.own.due_running() + self.other.due_running()

    def take_progress(self) -> list[dict[str, Any]]:
        return self.own.take_progress() + self.other.take_progress()

    def recycle(self, max_tasks: int | None, max_memory_bytes: int | None) -> None:
        self.own.recycle(max_tasks, max_memory_bytes)
        self.other.recycle(max_tasks, max_memory_bytes)
