"""How fast the Redis store alone goes, in the batches a broker uses: ``python -m bench.redis_store [URL] [N]``.

Adds N small tasks (flushing every 1,000, as a broker flushes once per round), takes them 100 at a time,
and records their outcomes 100 at a time; prints tasks per second for each phase. Works under a prefix
of its own on the given Redis (default redis://127.0.0.1:6379/0) and deletes its keys afterwards."""

from __future__ import annotations

import sys
import time
import uuid

import redis

from zerotask.store import Outcome, TaskRecord
from zerotask.store.redis import RedisStore
from zerotask.wire import FINISHED

BATCH = 100
FLUSH_EVERY = 1_000


def run(url: str, count: int) -> dict[str, float]:
    store = RedisStore(url, prefix=f"zt-bench-{uuid.uuid4().hex}")
    rates: dict[str, float] = {}
    try:
        started = time.perf_counter()
        for n in range(count):
            store.add(TaskRecord(f"task-{n}", "add", [n, n], {}), size_hint=60)
            if n % FLUSH_EVERY == FLUSH_EVERY - 1:
                assert store.flush() == []
        assert store.flush() == []
        rates["add+flush"] = count / (time.perf_counter() - started)
        taken: list[list[str]] = []
        started = time.perf_counter()
        while batch := store.take_many([(["add"], BATCH)])[0]:
            taken.append([record.id for record in batch])
        rates["take_many"] = count / (time.perf_counter() - started)
        assert sum(map(len, taken)) == count
        started = time.perf_counter()
        for ids in taken:
            assert all(store.finish_many([Outcome(task_id, FINISHED, 2, held=True) for task_id in ids]))
        rates["finish_many"] = count / (time.perf_counter() - started)
    finally:
        store.close()
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"{store.prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
    return rates


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    for phase, rate in run(url, count).items():
        print(f"{phase:>12}: {rate:>9,.0f} tasks/s")


if __name__ == "__main__":
    main()
