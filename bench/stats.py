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

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


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
