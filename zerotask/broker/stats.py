"""Throughput: how many tasks were submitted and finished per second, over the last few seconds.

A hook (:mod:`zerotask.broker.hooks`) that counts into one bucket per second, so the rate costs a few
additions per task and nothing per task to read. It also knows how long the broker has been up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord

WINDOW_S = 10  # the rates are averages over this many whole seconds


class Throughput(Hooks):
    """``rates()`` -> ``{"submitted_per_s", "finished_per_s"}`` over the last WINDOW_S seconds (or the
    uptime, if shorter); ``uptime_s`` since it was made. ``clock``: for tests, a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        # One slot per second of the window, each (the second it counts, submitted, finished).
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(WINDOW_S)]

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        bucket = self._buckets[second % WINDOW_S]
        if bucket[0] != second:  # a slot from a whole window ago: start it afresh
            bucket[:] = [second, 0, 0]
        return bucket

    def after_enqueue(self, record: TaskRecord) -> None:
        self._bucket()[1] += 1

    def after_finish(self, record: TaskRecord) -> None:
        self._bucket()[2] += 1

    @property
    def uptime_s(self) -> float:
        return self._clock() - self.started

    def rates(self) -> dict[str, float]:
        now = self._clock()
        recent = [bucket for bucket in self._buckets if int(now) - WINDOW_S < bucket[0] <= int(now)]
        span = min(float(WINDOW_S), max(now - self.started, 1.0))
        return {
            "submitted_per_s": round(sum(bucket[1] for bucket in recent) / span, 3),
            "finished_per_s": round(sum(bucket[2] for bucket in recent) / span, 3),
        }
