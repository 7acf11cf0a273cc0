"""The client host of tests/test_several_hosts.py: ``python -m tests.several_hosts_client`` runs there.

It waits until every broker answers and the nodes are connected, then puts the cluster under load: an
AsyncClient submits ``--tasks`` ``slow_add(i, 1, ...)`` at a steady ``--rate`` while a blocking Client
calls ``add(k, 1_000_000)`` one at a time. Every outcome a caller sees is recorded (a handle's callbacks,
its result asked again, each blocking call), and at the end each outcome is read back from a broker.
``DIR/progress.json`` says how far it got (the test cuts a host off when it sees fit), ``DIR/report.json``
holds what it saw. Times are ``time.monotonic()``, the same clock as the test's on Linux.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from zerotask.client import AsyncClient, Client
from zerotask.client.handle import TaskHandle
from zerotask.testing import scaled, wait_until

BLOCKING_OFFSET = 1_000_000


def _write(path: Path, data: object) -> None:
    """Write JSON so that a reader never sees half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def wait_for_cluster(endpoints: list[str], nodes: int) -> None:
    """Until every broker answers and ``nodes`` nodes are connected, counted over all brokers."""

    def count() -> int | None:
        total = 0
        for endpoint in endpoints:
            with Client(endpoint, timeout=1) as probe:
                try:
                    total += len(probe.info()["nodes"])
                except TimeoutError:
                    return None
        return total if total >= nodes else None

    wait_until(count, 60, f"every broker to answer and {nodes} nodes to connect")


class Blocking(threading.Thread):
    """Calls ``add(k, BLOCKING_OFFSET)`` one call at a time until stopped; records ``[start, end, k,
    outcome]`` for each call, ``outcome`` the result or the error's repr."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="blocking-client", daemon=True)
        self.endpoint = endpoint
        self.calls: list[list[Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with Client(self.endpoint, timeout=scaled(60)) as client:
            k = 0
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    outcome: Any = client.add(k, BLOCKING_OFFSET)
                except Exception as problem:  # recorded: the test says which call failed and how
                    outcome = repr(problem)
                self.calls.append([started, time.monotonic(), k, outcome])
                k += 1


def run(endpoint: str, tasks: int, rate: float, seconds: float, directory: Path) -> dict[str, Any]:
    outcomes: defaultdict[int, list[Any]] = defaultdict(list)  # every outcome each caller was told
    lock = threading.Lock()

    def record(i: int, outcome: Any) -> None:
        with lock:
            outcomes[i].append(outcome)

    blocking = Blocking(endpoint)
    with AsyncClient(endpoint, timeout=scaled(60)) as client:
        blocking.start()
        handles: list[TaskHandle] = []
        started = time.monotonic()
        for i in range(tasks):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            handle = client.slow_add(i, 1, seconds)
            handle.callback(lambda result, i=i: record(i, result), on_error=lambda error, i=i: record(i, f"error: {error!r}"))
            handles.append(handle)
            if i % 50 == 0:
                _write(directory / "progress.json", {"submitted": i + 1, "done": len(outcomes), "calls": len(blocking.calls)})
        deadline = time.monotonic() + scaled(120)
        for handle in handles:
            try:
                handle.result(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: S110 - the callbacks recorded what happened, or nothing did
                pass
        _write(directory / "progress.json", {"submitted": tasks, "done": len(outcomes), "calls": len(blocking.calls)})
        blocking.stopping.set()
        blocking.join(scaled(90))
        asked_again = {}
        for i, handle in enumerate(handles):
            try:
                asked_again[i] = handle.result(0)
            except Exception as problem:
                asked_again[i] = f"error: {problem!r}"
    stored = {}
    with Client(endpoint, timeout=scaled(30)) as reader:
        for i, handle in enumerate(handles):
            try:
                stored[i] = reader.result(handle.id)
            except Exception as problem:
                stored[i] = f"error: {problem!r}"
    with lock:
        seen = {i: outcomes.get(i, []) for i in range(tasks)}
    return {
        "tasks": tasks,
        "seen": seen,  # per task: what its callbacks were told
        "asked_again": asked_again,  # per task: result() once everything was done
        "stored": stored,  # per task: the outcome a broker gives for its id afterwards
        "blocking": blocking.calls,
        "blocking_still_running": blocking.is_alive(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True, help="the endpoint (or list of endpoints) to call")
    parser.add_argument("--probe", nargs="+", required=True, metavar="ENDPOINT", help="brokers that must answer first")
    parser.add_argument("--nodes", type=int, default=2, help="nodes that must be connected first")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0, help="tasks submitted per second")
    parser.add_argument("--seconds", type=float, default=0.002, help="how long each task sleeps")
    parser.add_argument("--dir", type=Path, required=True)
    options = parser.parse_args()
    wait_for_cluster(options.probe, options.nodes)
    _write(options.dir / "progress.json", {"submitted": 0, "done": 0, "calls": 0})
    report = run(options.endpoint, options.tasks, options.rate, options.seconds, options.dir)
    _write(options.dir / "report.json", report)


if __name__ == "__main__":
    main()
