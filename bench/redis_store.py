"""How fast the Redis store alone goes, in the batches a broker uses:
``python -m bench.redis_store [URL] [N] [--repeat R] [--commands]``.

Adds N small tasks (flushing every 1,000, as a broker flushes once per round), takes them 100 at a time,
and records their outcomes 100 at a time. Prints, per phase, tasks per second, and the CPU each task
cost this process (the broker's side: encoding, redis-py) and Redis (from ``INFO cpu``: the scripts,
which share the machine's CPUs with everything else, so they count as much as the wall time). With
``--commands``, also what Redis spent per task in each command (``INFO commandstats``: a script's own
Lua time is its EVALSHA's time minus the commands it called). Works under a prefix of its own on the
given Redis (default redis://127.0.0.1:6379/0) and deletes its keys afterwards."""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from zerotask.store import Outcome, TaskRecord
from zerotask.store.redis import RedisStore
from zerotask.wire import FINISHED

BATCH = 100
FLUSH_EVERY = 1_000


@dataclass(slots=True)
class Phase:
    rate: float  # tasks/s
    client_us: float  # this process's CPU per task
    redis_us: float  # Redis's CPU per task
    commands: dict[str, float]  # Redis command -> µs per task (with --commands)


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _command_usec(client: redis.Redis) -> dict[str, float]:
    return {name.removeprefix("cmdstat_"): float(stats["usec"]) for name, stats in client.info("commandstats").items()}


def _measure(client: redis.Redis, count: int, commands: bool, work: Callable[[], None]) -> Phase:
    if commands:
        client.config_resetstat()
    cpu, wall, mine = _redis_cpu(client), time.perf_counter(), time.process_time()
    work()
    wall, mine = time.perf_counter() - wall, time.process_time() - mine
    cpu = _redis_cpu(client) - cpu
    used = {}
    if commands:
        used = {name: usec / count for name, usec in _command_usec(client).items() if name not in ("info", "config|resetstat")}
    return Phase(count / wall, mine * 1e6 / count, cpu * 1e6 / count, used)


def run(url: str, count: int, commands: bool = False) -> dict[str, Phase]:
    store = RedisStore(url, prefix=f"zt-bench-{uuid.uuid4().hex}")
    client = redis.Redis.from_url(url)
    phases: dict[str, Phase] = {}
    taken: list[list[str]] = []

    def add() -> None:
        for n in range(count):
            store.add(TaskRecord(f"task-{n}", "add", [n, n], {}), size_hint=60)
            if n % FLUSH_EVERY == FLUSH_EVERY - 1:
                assert store.flush() == []
        assert store.flush() == []

    def take() -> None:
        while batch := store.take_many([(["add"], BATCH)])[0]:
            taken.append([record.id for record in batch])
        assert sum(map(len, taken)) == count

    def finish() -> None:
        for ids in taken:
            assert all(store.finish_many([Outcome(task_id, FINISHED, 2, held=True) for task_id in ids]))

    try:
        phases["add+flush"] = _measure(client, count, commands, add)
        phases["take_many"] = _measure(client, count, commands, take)
        phases["finish_many"] = _measure(client, count, commands, finish)
    finally:
        store.close()
        keys = list(client.scan_iter(match=f"{store.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="redis://127.0.0.1:6379/0")
    parser.add_argument("count", nargs="?", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs (each phase's best rate is kept)")
    parser.add_argument("--commands", action="store_true", help="Redis's time per command (resets its stats)")
    options = parser.parse_args()
    runs = [run(options.url, options.count, options.commands) for _ in range(options.repeat)]
    print(f"{'phase':>12}  {'tasks/s':>9}  {'client µs/task':>14}  {'Redis µs/task':>13}  {'sum':>6}")
    for phase in runs[0]:
        best = max((found[phase] for found in runs), key=lambda p: p.rate)
        total = best.client_us + best.redis_us
        print(f"{phase:>12}  {best.rate:>9,.0f}  {best.client_us:>14.1f}  {best.redis_us:>13.1f}  {total:>6.1f}")
        for name, usec in sorted(best.commands.items(), key=lambda item: -item[1]):
            if usec >= 0.05:
                print(f"{'':>14}{name:>20} {usec:>6.2f} µs/task")


if __name__ == "__main__":
    main()
