"""The settings every runner gets, and the work it does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Config:
    tasks: int  # throughput: add(x, y) tasks per run
    calls: int  # latency: sequential blocking calls per run
    warmup: int  # tasks run through each system before anything is timed
    window: int  # requests in flight at most, for the pipelined raw and zerotask-queueing clients
    raw_credit: int  # requests a raw-ceiling worker may be sent before it answers
    drain_s: float  # scale: how long a node drains the big queue at most
    timeout_s: float  # the longest wait for any one answer
    workdir: Path  # logs of the processes the benchmark starts
    redis_url: str | None  # redis://host:port/db for Celery, None without Celery


def pairs(count: int) -> list[tuple[int, int]]:
    """The arguments of ``count`` add(x, y) tasks."""
    return [(i, i) for i in range(count)]


def expected_sum(count: int) -> int:
    """The sum of the results of ``pairs(count)``."""
    return count * (count - 1)
