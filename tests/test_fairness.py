"""The broker hands each task to exactly one node, fairly, and never more than a node's credit."""

from __future__ import annotations

import collections
import threading
from typing import Any

from zerotask.client import AsyncClient
from zerotask.testing import Cluster, scaled


def test_long_tasks_spread_over_nodes_one_per_free_worker(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node("tests.tasks", workers=1)
    cluster.start_node("tests.tasks", workers=1)
    most_held: collections.Counter[str] = collections.Counter()
    done = threading.Event()

    def watch() -> None:  # how many tasks each node holds, sampled while they run
        while not done.is_set():
            for node in cluster.info()["nodes"]:
                most_held[node["name"]] = max(most_held[node["name"]], node["tasks"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with AsyncClient(cluster.endpoint, timeout=scaled(60)) as client:
            outcomes: list[dict[str, Any]] = [handle.result(scaled(60)) for handle in [client.hold(0.3) for _ in range(8)]]
    finally:
        done.set()
        watcher.join(scaled(10))
    by_node = collections.Counter(outcome["ppid"] for outcome in outcomes)
    assert sum(by_node.values()) == 8 and min(by_node.values()) >= 2  # both nodes shared the work
    assert max(most_held.values()) == 1  # a 0.3 s task is never prefetched: one per free worker


def test_each_task_runs_exactly_once_when_nothing_fails(cluster: Cluster) -> None:
    cluster.start_broker()
    for _ in range(2):
        cluster.start_node("tests.tasks", workers=2)
    with AsyncClient(cluster.endpoint, timeout=scaled(60)) as client:
        handles = [client.echo(i) for i in range(2000)]
        results = [handle.result(scaled(60))["args"][0] for handle in handles]
    assert results == list(range(2000))
    finished = [node["finished"] for node in cluster.info()["nodes"]]
    assert sum(finished) == 2000  # no task reported twice
