"""zerotask's runners: a broker and one node as processes (zerotask.testing.Cluster), this process the client."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import zmq

from bench.config import Config, expected_sum, pairs
from bench.procs import drain, memory_kib, wait_for
from bench.stats import Run, ScaleRun, percentile
from zerotask.client import AsyncClient
from zerotask.testing import Cluster

TASKS_MODULE = "bench.tasks"


CLIENT_KIND = "AsyncClient, every task submitted before the first result is awaited"


def produce(endpoint: str, work: list[tuple[int, int]], timeout_s: float) -> int:
    """The throughput producer: submit every add(x, y), collect every result, return their sum."""
    with AsyncClient(endpoint) as client:
        handles = [client.submit("add", x, y) for x, y in work]
        return sum(handle.result(timeout=timeout_s) for handle in handles)


@contextmanager
def _cluster(store: str, config: Config, name: str) -> Iterator[Cluster]:
    """A Cluster whose logs stay in the work directory, and are shown if anything goes wrong."""
    directory = config.workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(store=store, directory=directory)
    try:
        yield cluster
    except Exception:
        for log in sorted(directory.glob("*.log")):
            print(f"---- {log} (last lines)\n{''.join(log.read_text(errors='replace').splitlines(True)[-20:])}", file=sys.stderr)
        raise
    finally:
        cluster.stop()
        for leftover in directory.glob(f"{store}*"):  # the SQLite file and its WAL: logs are all we keep
            leftover.unlink()


_runs = 0


def run(store: str, workers: int, config: Config) -> Run:
    global _runs
    _runs += 1
    with _cluster(store, config, f"zerotask-{_runs:03d}-{store.split('.')[0]}-w{workers}") as cluster:
        cluster.start_broker()
        cluster.start_node(TASKS_MODULE, workers=workers)
        produce(cluster.endpoint, pairs(config.warmup), config.timeout_s)
        started = time.perf_counter()
        total = produce(cluster.endpoint, pairs(config.tasks), config.timeout_s)
        seconds = time.perf_counter() - started
        latencies, calls_ok = [], True
        client = cluster.client(config.timeout_s)
        for _ in range(config.calls):
            started = time.perf_counter()
            calls_ok &= client.add(1, 2) == 3
            latencies.append(time.perf_counter() - started)
    return Run(
        f"zerotask-{'memory' if store == 'memory' else 'sqlite'}", workers, config.tasks, seconds,
        total == expected_sum(config.tasks), percentile(latencies, 0.5), percentile(latencies, 0.99), calls_ok,
    )  # fmt: skip


def queue(endpoint: str, count: int, window: int, timeout_s: float) -> list[tuple[int, str]]:
    """Submit add(i, i) for i < count over one DEALER, ``window`` requests in flight (JSON-RPC, no client
    library); returns (i, task id) for about a hundred of them, the last one included."""
    every = max(1, count // 100)
    sample: list[tuple[int, str]] = []
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                params = {"method": "add", "args": [sent, sent]}
                sock.send(orjson.dumps({"jsonrpc": "2.0", "method": "zerotask.broker.submit", "params": params, "id": sent}))
                sent += 1
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"the broker did not acknowledge within {timeout_s} s ({received} of {count})")
            while received < sent:
                try:
                    reply: dict[str, Any] = orjson.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if "result" not in reply:
                    raise RuntimeError(f"the broker refused a task: {reply}")
                received += 1
                if reply["id"] % every == 0 or reply["id"] == count - 1:
                    sample.append((reply["id"], reply["result"]))
    finally:
        sock.close(linger=0)
    return sorted(sample)


def scale(store: str, workers: int, count: int, config: Config) -> ScaleRun:
    global _runs
    _runs += 1
    with _cluster(store, config, f"zerotask-{_runs:03d}-scale-{store.split('.')[0]}") as cluster:
        broker = cluster.start_broker()
        client = cluster.client(config.timeout_s)
        before = memory_kib(broker.pid, "VmRSS") * 1024
        started = time.perf_counter()
        sample = queue(cluster.endpoint, count, config.window, config.timeout_s)
        queue_seconds = time.perf_counter() - started
        holding = memory_kib(broker.pid, "VmHWM") * 1024

        def left() -> tuple[int, int]:
            info = client.info()
            return info["queued"].get("add", 0), sum(node["tasks"] for node in info["nodes"])

        cluster.start_node(TASKS_MODULE, workers=workers, wait=False)
        wait_for(lambda: left()[0] < count, 60, "the node to take its first task")
        drained, drain_seconds = drain(left, count, config.drain_s)
        after = memory_kib(broker.pid, "VmRSS") * 1024
        finished = [(i, task_id) for i, task_id in sample if client.status(task_id) == "FINISHED"]
        sample_ok = bool(finished) and all(client.result(task_id, timeout=config.timeout_s) == 2 * i for i, task_id in finished)
    return ScaleRun(
        f"zerotask-{'memory' if store == 'memory' else 'sqlite'}", workers, count, queue_seconds,
        "the broker process: VmRSS idle, VmHWM (peak RSS) once every task is queued, VmRSS at the end",
        before, holding, after, drained, drain_seconds, sample_ok,
    )  # fmt: skip
