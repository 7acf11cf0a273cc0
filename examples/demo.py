"""`make demo`: a broker on the embedded SQLite store, a node with two workers, and a client.

Each part runs as its own process, as it would across machines: the same commands you would type
(`zerotask broker`, `zerotask node`) are started here on a free port, then stopped cleanly.
"""

from __future__ import annotations

import time

from zerotask.client import AsyncClient
from zerotask.testing import Cluster


def main() -> None:
    with Cluster(store="zerotask.db") as cluster:
        print(f"broker: python -m zerotask.broker --bind {cluster.endpoint} --store {cluster.store}")
        cluster.start_broker()
        print(f"node:   python -m zerotask.node --broker {cluster.endpoint} --workers 2   (serves add, subtract)")
        cluster.start_node(workers=2)
        client = cluster.client()
        print(f"client: Client({cluster.endpoint!r})")
        print(f"  client.add(5, 6)      = {client.add(5, 6)}")
        print(f"  client.subtract(5, 6) = {client.subtract(5, 6)}")
        task_id = client.submit("add", 2, 3)
        print(f"  client.submit('add', 2, 3) -> task {task_id}")
        print(f"  client.result(task_id)     = {client.result(task_id, timeout=10)}")
        print(f"  client.status(task_id)     = {client.status(task_id)}")
        with AsyncClient(cluster.endpoint, timeout=60) as many:
            print(f"async:  AsyncClient({cluster.endpoint!r})")
            started = time.perf_counter()
            handles = [many.add(i, i) for i in range(10_000)]
            total = sum(handle.result() for handle in handles)
            elapsed = time.perf_counter() - started
            print(f"  10,000 add tasks in flight at once: sum {total}, {elapsed:.2f} s ({10_000 / elapsed:,.0f} tasks/s)")
            print(f"  many.starmap('subtract', ...) = {list(many.starmap('subtract', [(10, 1), (10, 2), (10, 3)]))}")
    print("broker and node stopped")


if __name__ == "__main__":
    main()
