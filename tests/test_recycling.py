"""Worker recycling (--max-tasks-per-worker, --max-memory-per-worker): a worker process is replaced
between two tasks, and no task is lost or failed for it."""

from __future__ import annotations

import time

from zerotask.testing import Cluster


def test_a_worker_is_replaced_after_its_number_of_tasks() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=1, extra=["--max-tasks-per-worker", "3"])
        client = cluster.client()
        pids = [client.pid() for _ in range(7)]
        assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1 and pids[0] != pids[3] != pids[6]


def test_a_worker_is_replaced_once_it_grows_past_its_memory() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=1, extra=["--max-memory-per-worker", "80"])
        client = cluster.client()
        small = client.keep_memory(1)
        assert client.keep_memory(1) == small  # still small: the same process
        assert client.keep_memory(120) == small  # past 80 MB now
        time.sleep(1.1)  # the node reads a worker's memory between tasks, at most once a second
        assert client.pid() == small  # after this one, the check: replaced
        assert client.pid() != small


def test_the_thread_pool_ignores_recycling() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", extra=["--pool", "thread", "--max-tasks-per-worker", "1"])
        client = cluster.client()
        assert client.pid() == client.pid()  # threads of the node's own process
