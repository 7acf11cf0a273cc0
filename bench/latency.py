"""Where a blocking call's time goes: ``python -m bench.latency [--calls N] [--store memory|sqlite] [--pool process|thread]``.

Times the same round trip cut shorter and shorter, on one broker and one node with one worker:

- ``raw pyzmq ceiling``: the same add through bench.raw's broker and worker (client DEALER -> ROUTER/ROUTER
  -> worker DEALER and back: 4 ZeroMQ hops, no task system), the bound zerotask is measured against;
- ``ping``: client -> broker -> client (2 ZeroMQ hops, no task);
- ``raw JSON-RPC add``: a task call from a bare DEALER socket, no zerotask client code;
- ``Client.add``: the blocking client (client -> broker -> node -> worker -> node -> broker -> client:
  4 ZeroMQ hops, and 2 pipe hops to a worker process or 2 thread hand-offs with ``--pool thread``).

The difference between the lines is what each part adds; the ping is the floor a ZeroMQ hop sets here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import zmq

from bench.procs import Process
from zerotask.client import Client
from zerotask.testing import Cluster, free_port


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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--pool", choices=["process", "thread"], default="process", help="the node's pool (process)")
    options = parser.parse_args()
    with raw_ceiling() as ceiling:
        ceiling_p50, ceiling_p99 = percentiles(ceiling, options.calls)
    with Cluster(store="memory" if options.store == "memory" else "bench.db") as cluster:
        cluster.start_broker()
        cluster.start_node("bench.tasks", workers=1, extra=["--pool", options.pool])
        raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(cluster.endpoint)
        request = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1})

        def raw_add() -> None:
            raw.send(request)
            raw.recv()

        with Client(cluster.endpoint, timeout=30) as client:
            rows = [
                ("ping (client -> broker -> client)", lambda: client.rpc("zerotask.broker.ping", {})),
                ("raw JSON-RPC add (DEALER socket)", raw_add),
                ("Client.add (the whole path)", lambda: client.add(1, 2)),
            ]
            print(f"{options.calls} sequential calls each, {options.store} store, 1 node x 1 worker, {options.pool} pool\n")
            print("| what | p50 ms | p99 ms |\n| --- | ---: | ---: |")
            print(f"| raw pyzmq ceiling (bench.raw, no task system) | {ceiling_p50:.3f} | {ceiling_p99:.3f} |")
            for name, call in rows:
                p50, p99 = percentiles(call, options.calls)
                print(f"| {name} | {p50:.3f} | {p99:.3f} |")
        raw.close()


@contextmanager
def raw_ceiling() -> Iterator[Callable[[], None]]:
    """A blocking add(1, 2) through bench.raw's broker and one worker (started here, stopped after)."""
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
        yield add
    finally:
        sock.close()
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
