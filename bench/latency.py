"""Where a blocking call's time goes: ``python -m bench.latency [--calls N] [--store memory|sqlite]``.

Times the same round trip cut shorter and shorter, on one broker and one node with one worker:

- ``ping``: client -> broker -> client (2 ZeroMQ hops, no task);
- ``raw JSON-RPC add``: a task call from a bare DEALER socket, no zerotask client code;
- ``Client.add``: the blocking client (client -> broker -> node -> worker -> node -> broker -> client:
  4 ZeroMQ hops and 2 pipe hops).

The difference between the lines is what each part adds; the ping is the floor a ZeroMQ hop sets here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson
import zmq

from zerotask.client import Client
from zerotask.testing import Cluster


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
    options = parser.parse_args()
    with Cluster(store="memory" if options.store == "memory" else "bench.db") as cluster:
        cluster.start_broker()
        cluster.start_node("bench.tasks", workers=1)
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
            print(f"{options.calls} sequential calls each, {options.store} store, 1 node x 1 worker\n")
            print("| what | p50 ms | p99 ms |\n| --- | ---: | ---: |")
            for name, call in rows:
                p50, p99 = percentiles(call, options.calls)
                print(f"| {name} | {p50:.3f} | {p99:.3f} |")
        raw.close()


if __name__ == "__main__":
    main()
