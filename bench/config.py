"""The settings every runner gets, the work it does, and the systems the benchmark knows.

To add a row, add a :class:`System` to SYSTEMS: a zerotask system is its brokers' ``--store`` spec and
how many brokers share it (each with a node of its own); see BENCHMARKS.md, "Adding a system".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Config:
    tasks: int  # throughput: add(x, y) tasks per run, for zerotask and the raw ceiling
    celery_tasks: int  # the same for Celery, some 50 times slower: as many would take minutes a run
    calls: int  # latency: sequential blocking calls per run
    warmup: int  # tasks run through each system before anything is timed (and blocking calls before the latency loop)
    window: int  # requests in flight at most, for the pipelined raw and zerotask-queueing clients
    raw_credit: int  # requests a raw-ceiling worker may be sent before it answers
    drain_s: float  # scale: how long a node drains the big queue at most
    timeout_s: float  # the longest wait for any one answer
    workdir: Path  # logs of the processes the benchmark starts
    redis_url: str | None  # redis://host:port/db for Celery, None without Celery


@dataclass(frozen=True, slots=True)
class System:
    """One row of the report, and how to run it.

    ``kind`` picks the runner: "zerotask" (bench/zt.py), "celery" (bench/celery_bench.py) or "raw"
    (bench/raw.py). For zerotask, ``store`` is the brokers' ``--store``: "memory", "sqlite" (a fresh
    file per run), or any other spec, passed as it is after ``{redis}`` is replaced by the Redis the
    benchmark uses (redis://host:port); ``brokers`` broker processes share it, each with a node of
    ``workers`` worker processes, and the client talks to the first broker. ``pool`` is Celery's."""

    name: str
    kind: str
    store: str = "memory"
    brokers: int = 1
    pool: str = ""
    min_workers: int = 1
    max_workers: int | None = None
    scale: bool = False  # whether the scale run (a big queue, then a drain) applies
    needs_redis: bool = False  # left out, with a note, when the benchmark has no Redis

    def takes(self, workers: int) -> bool:
        """Whether the system runs at this worker count (Celery's solo pool at 1 only, prefork above)."""
        return workers >= self.min_workers and (self.max_workers is None or workers <= self.max_workers)


SYSTEMS: tuple[System, ...] = (
    System("zerotask-memory", "zerotask", store="memory", scale=True),
    System("zerotask-sqlite", "zerotask", store="sqlite", scale=True),
    # Redis: a database of the benchmark's Redis that it flushes before and after (one broker; then two
    # brokers on it, a node each, the client at the first). Celery's rows run on that same Redis.
    System("zerotask-redis", "zerotask", store="{redis}/12", needs_redis=True),
    System("zerotask-redis-2-brokers", "zerotask", store="{redis}/12", brokers=2, needs_redis=True),
    System("celery-solo", "celery", pool="solo", max_workers=1, scale=True, needs_redis=True),
    System("celery-prefork", "celery", pool="prefork", min_workers=2, scale=True, needs_redis=True),
    System("raw", "raw"),
)
BY_NAME = {system.name: system for system in SYSTEMS}


def pairs(count: int) -> list[tuple[int, int]]:
    """The arguments of ``count`` add(x, y) tasks."""
    return [(i, i) for i in range(count)]


def expected_sum(count: int) -> int:
    """The sum of the results of ``pairs(count)``."""
    return count * (count - 1)
