"""CPU per task by process in a throughput run: ``python -m bench.roles [--store memory|sqlite|URL] [--tasks N]``.

A broker and a node (``--workers``) each a process of their own, and an AsyncClient in this process that
submits ``--tasks`` ``add`` tasks, all before the first result is awaited, and collects every result. CPU
(user + system, all threads) of the client, broker, node and workers is read from /proc before and after
the timed part, never during it, and divided by the tasks: where a throughput run's CPU goes, which the
latency rows of ``python -m bench`` do not show. Repeat ``--rounds`` times (fresh processes each) and
compare rows of one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import cpu
from bench.procs import Process, log_path, wait_for
from zerotask.client import AsyncClient, Client
from zerotask.testing import free_port


def run_once(store: str, tasks: int, workers: int, directory: Path) -> tuple[float, dict[str, float]]:
    """(tasks/s, CPU µs per task by role) of one run on fresh processes."""
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker_args = [sys.executable, "-m", "zerotask.broker", "--bind", endpoint, "--publish", publish, "--store", store]
    broker = Process(broker_args, log_path(directory, "broker"), leader_first=True)
    node_args = [sys.executable, "-m", "zerotask.node", "bench.tasks", "--broker", endpoint, "--workers", str(workers)]
    node: Process | None = None
    try:
        node = Process(node_args, log_path(directory, "node"), leader_first=True)
        with Client(endpoint, timeout=30) as probe:
            wait_for(lambda: len(probe.info()["nodes"]) == 1, 30, "the node to connect", interval_s=0.05)
        with AsyncClient(endpoint, timeout=120) as client:
            warm = [client.add(i, i) for i in range(500)]
            assert [handle.result(timeout=60) for handle in warm] == [2 * i for i in range(500)]
            roles: cpu.Roles = {"client": [os.getpid()], "broker": [broker.pid], "node": [node.pid]}
            roles = {**roles, "workers": cpu.descendants([node.pid])}
            before, started = cpu.snapshot(roles), time.perf_counter()
            handles = [client.add(i, 1) for i in range(tasks)]
            total = sum(handle.result(timeout=120) for handle in handles)
            seconds, after = time.perf_counter() - started, cpu.snapshot(roles)
        assert total == tasks * (tasks - 1) // 2 + tasks, "a wrong sum"
        per_task = {role: used / tasks * 1e6 for role, used in cpu.used(before, after).items()}
        return tasks / seconds, per_task
    finally:
        if node is not None:
            node.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.roles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory", help="memory, sqlite (a fresh file), or a Redis URL (flushed first)")
    parser.add_argument("--tasks", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args(argv)
    print("| round | tasks/s | client | broker | node | workers | all (CPU µs per task) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for round_number in range(1, options.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="zerotask-roles-") as work:
            store = str(Path(work) / "bench.db") if options.store == "sqlite" else options.store
            if store.startswith("redis"):
                from bench.zt import flush_store

                flush_store(store)
            rate, per_task = run_once(store, options.tasks, options.workers, Path(work))
        cells = " | ".join(f"{per_task[role]:.1f}" for role in ("client", "broker", "node", "workers"))
        print(f"| {round_number} | {rate:,.0f} | {cells} | {sum(per_task.values()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
