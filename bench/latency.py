"""Where a blocking call's time goes: ``python -m bench.latency [--calls N] [--store memory|sqlite] [--pool process,thread]``.

Times the same round trip cut shorter and shorter, on one broker and one node with one worker per pool:

- ``raw pyzmq ceiling``: the same add through bench.raw's broker and worker (client DEALER -> ROUTER/ROUTER
  -> worker DEALER and back: 4 ZeroMQ hops, no task system), the bound zerotask is measured against;
- ``ping``: client -> broker -> client (2 ZeroMQ hops, no task);
- ``raw JSON-RPC add``: a task call from a bare DEALER socket, no zerotask client code;
- ``Client.add``: the blocking client (client -> broker -> node -> worker -> node -> broker -> client:
  4 ZeroMQ hops, and 2 pipe hops to a worker process or 2 thread hand-offs with ``--pool thread``).

The difference between the lines is what each part adds; the ping is the floor a ZeroMQ hop sets here.
Every system runs at once and the calls are made in rounds, a block to each in turn, so that what else the
machine does weighs on all of them alike. CPU per call is what this process (the caller) and the system's
processes (its broker, node and workers) used during the blocks of that line, read from /proc and
getrusage around each block; the last column divides p50, p99 and CPU by the raw ceiling's.
"""

from __future__ import annotations

import argparse
import functools
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import orjson
import zmq

from bench.cpu import children, cpu_s
from bench.procs import Process
from zerotask.client import Client
from zerotask.testing import Cluster, free_port

POOLS = ("process", "thread")
ROUNDS = 10
Row = tuple[str, Callable[[], object], list[int]]  # (name, one call, the pids of the processes it involves)


def percentiles(call: Callable[[], object], calls: int) -> tuple[float, float]:
    for _ in range(200):  # warm up
        call()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return seconds[len(seconds) // 2] * 1000, seconds[int(len(seconds) * 0.99)] * 1000


def interleaved(rows: list[Row], calls: int, rounds: int = ROUNDS) -> list[tuple[str, float, float, float]]:
    """``(name, p50 ms, p99 ms, CPU µs per call)`` per row: ``calls`` calls each, made in ``rounds``
    blocks taken in turn."""
    for _, call, _ in rows:
        for _ in range(200):  # warm up
            call()
    seconds: list[list[float]] = [[] for _ in rows]
    cpu = [0.0 for _ in rows]
    for _ in range(rounds):
        for index, ((_, call, pids), samples) in enumerate(zip(rows, seconds, strict=True)):
            before = _cpu_s(pids)
            for _ in range(max(1, calls // rounds)):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
            cpu[index] += _cpu_s(pids) - before
    table = []
    for (name, _, _), samples, used in zip(rows, seconds, cpu, strict=True):
        count = len(samples)
        samples.sort()
        table.append((name, samples[count // 2] * 1000, samples[int(count * 0.99)] * 1000, used / count * 1e6))
    return table


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by this process (every thread) and the processes ``pids``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + sum(cpu_s(pid) or 0.0 for pid in pids)


def _pools(text: str) -> list[str]:
    pools = [pool.strip() for pool in text.split(",") if pool.strip()]
    if not pools or any(pool not in POOLS for pool in pools):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(POOLS)}")
    return pools


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--pool", type=_pools, default=["process"], help="the nodes' pools, e.g. process,thread (process)")
    options = parser.parse_args()
    with ExitStack() as stack:
        rows: list[Row] = [("raw pyzmq ceiling (bench.raw, no task system)", *stack.enter_context(raw_ceiling()))]
        for pool in options.pool:
            cluster = stack.enter_context(Cluster(store="memory" if options.store == "memory" else "bench.db"))
            cluster.start_broker()
            node = cluster.start_node("bench.tasks", workers=1, extra=["--pool", pool])
            assert cluster.broker is not None
            pids = [cluster.broker.pid, node.pid, *children(node.pid)]
            client = stack.enter_context(Client(cluster.endpoint, timeout=30))
            label = f", {pool} pool" if len(options.pool) > 1 else ""
            rows += [
                (f"ping (client -> broker -> client){label}", functools.partial(client.rpc, "zerotask.broker.ping", {}), pids),
                (f"raw JSON-RPC add (DEALER socket){label}", stack.enter_context(raw_add(cluster.endpoint)), pids),
                (f"Client.add (the whole path){label}", functools.partial(client.call, "add", 1, 2), pids),
            ]
        pools = " and ".join(options.pool)
        print(
            f"{options.calls} sequential calls each in {ROUNDS} rounds, {options.store} store, 1 node x 1 worker, {pools} pool\n"
        )
        print("| what | p50 ms | p99 ms | CPU µs/call | vs raw: p50 · p99 · CPU |\n| --- | ---: | ---: | ---: | ---: |")
        table = interleaved(rows, options.calls)
        _, raw_p50, raw_p99, raw_cpu = table[0]
        for name, p50, p99, cpu in table:
            ratios = f"{p50 / raw_p50:.2f}x · {p99 / raw_p99:.2f}x · {cpu / raw_cpu:.2f}x"
            print(f"| {name} | {p50:.3f} | {p99:.3f} | {cpu:.0f} | {ratios} |")


@contextmanager
def raw_add(endpoint: str) -> Iterator[Callable[[], None]]:
    """add(1, 2) as a JSON-RPC call from a bare DEALER socket to a zerotask broker."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    request = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1})

    def add() -> None:
        sock.send(request)
        sock.recv()

    try:
        yield add
    finally:
        sock.close()


@contextmanager
def raw_ceiling() -> Iterator[tuple[Callable[[], None], list[int]]]:
    """A blocking add(1, 2) through bench.raw's broker and one worker (started here, stopped after), and
    their pids."""
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    logs = Path(tempfile.mkdtemp(prefix="zerotask-latency-"))
    module = [sys.executable, "-m", "bench.raw"]
    processes = [Process([*module, "broker", frontend, backend], logs / "raw-broker.log")]
    processes.append(Process([*module, "worker", backend], logs / "raw-worker.log"))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(frontend)
    request = orjson.dumps({"id": 1, "method": "add", "params": [1, 2]})

    def add() -> None:
        sock.send(request)
        if not sock.poll(30_000):
            raise TimeoutError("the raw ceiling's broker or worker did not answer")
        sock.recv()

    try:
        yield add, [process.pid for process in processes]
    finally:
        sock.close()
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
