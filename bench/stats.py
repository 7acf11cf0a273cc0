"""What one run measured, and the arithmetic that turns runs into table cells."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Run:
    """One repetition of one system at one worker count: a throughput run, then a latency run."""

    system: str
    workers: int
    tasks: int
    seconds: float
    sum_ok: bool
    p50_s: float
    p99_s: float
    calls_ok: bool
    calls: int = 0
    # CPU seconds each role (client, broker, node, workers) used over the latency loop; None: not measured
    cpu_s: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_per_call_s(self) -> float | None:
        """User plus system CPU of every process involved, per blocking call."""
        if self.cpu_s is None or not self.calls:
            return None
        return sum(self.cpu_s.values()) / self.calls

    @classmethod
    def of(
        cls, system: str, workers: int, tasks: int, seconds: float, sum_ok: bool,
        latencies_s: Sequence[float], calls_ok: bool, cpu_s: dict[str, float] | None,
    ) -> Run:  # fmt: skip
        """A run from its throughput figures and its latency loop."""
        p50, p99 = percentile(latencies_s, 0.5), percentile(latencies_s, 0.99)
        return cls(system, workers, tasks, seconds, sum_ok, p50, p99, calls_ok, len(latencies_s), cpu_s)


@dataclass(slots=True)
class ScaleRun:
    """A large queue built with no worker running, then drained by one node (or Celery worker) for at most
    a set time: ``drained`` of the ``tasks`` were finished after ``drain_seconds``."""

    system: str
    workers: int
    tasks: int
    queue_seconds: float
    memory_what: str  # how the memory figures were taken
    memory_before: int  # bytes, before anything was queued
    memory_holding: int  # bytes, with every task queued
    memory_after: int  # bytes, at the end of the drain
    drained: int
    drain_seconds: float
    sample_ok: bool

    @property
    def queue_rate(self) -> float:
        return self.tasks / self.queue_seconds

    @property
    def drain_rate(self) -> float:
        return self.drained / self.drain_seconds


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))
