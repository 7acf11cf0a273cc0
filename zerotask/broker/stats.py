"""Throughput: how many tasks were submitted and finished per second, over the last few seconds.

A hook (:mod:`zerotask.broker.hooks`) that only counts (an addition per task: it is on the hot path);
the rates come from samples of the counts taken when they are asked for. It also knows how long the
broker has been up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord

WINDOW_S = 10.0  # the rates are averages over about this many seconds


class Throughput(Hooks):
    """``rates()`` -> ``{"submitted_per_s", "finished_per_s"}`` since the oldest sample of the last
    WINDOW_S seconds (samples are taken by ``rates()`` itself, so asking every second gives a sliding
    window; the first answer covers the uptime); ``uptime_s`` since it was made. ``clock``: for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.submitted = 0
        self.finished = 0
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])

    def after_enqueue(self, record: TaskRecord) -> None:
        self.submitted += 1

    def after_finish(self, record: TaskRecord) -> None:
        self.finished += 1

    @property
    def uptime_s(self) -> float:
        return self._clock() - self.started

    def rates(self) -> dict[str, float]:
        now = self._clock()
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()
        since, submitted, finished = self._samples[0]
        span = max(now - since, 1.0)
        self._samples.append((now, self.submitted, self.finished))
        while len(self._samples) > 64:  # asked far more often than once a second: keep it small
            self._samples.popleft()
        return {
            "submitted_per_s": round((self.submitted - submitted) / span, 3),
            "finished_per_s": round((self.finished - finished) / span, 3),
        }
