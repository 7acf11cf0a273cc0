"""Named queues, priorities and tasks due later, with a real broker, nodes and workers.

(The core's side of each is tested in-process in test_core_placement.py; here, what a user does: the
node's ``--queues``, ``@task(queue=..., priority=...)``, ``apply_async(countdown=..., eta=...)``, and a
scheduled task surviving a ``kill -9`` of the broker.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from zerotask.client import AsyncClient
from zerotask.testing import Cluster, scaled, wait_until


def test_a_node_takes_only_from_its_queues() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", extra=["--queues", "io"])
        client = cluster.client()
        io_task = client.apply_async("add", (1, 2), queue="io")
        default_task = client.apply_async("add", (3, 4))
        assert client.result(io_task) == 3
        time.sleep(0.3)
        assert client.status(default_task) == "QUEUED"  # no node serves the default queue yet
        cluster.start_node("tests.tasks")
        assert client.result(default_task) == 7


def test_a_task_goes_to_the_queue_its_decorator_names() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", extra=["--queues", "io"])
        assert cluster.client().io_add(2, 3) == 5  # the node announced io_add's queue: io


def test_higher_priority_tasks_run_first() -> None:
    with Cluster() as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        order = cluster.directory / "order.txt"
        blocker = client.apply_async("sleep", (1.0,))  # queued first, runs first, while the rest queue
        low = [client.apply_async("append", (str(order), f"low{n}"), priority=0) for n in range(3)]
        high = client.apply_async("append", (str(order), "high"), priority=9)
        cluster.start_node("tests.tasks", workers=1, extra=["--prefetch", "0"])
        for handle in (blocker, *low, high):
            handle.result(timeout=scaled(30))
        assert order.read_text().split() == ["high", "low0", "low1", "low2"]


def test_a_countdown_task_is_scheduled_then_runs_at_its_time() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        client = cluster.client()
        started = time.time()
        task_id = client.apply_async("add", (1, 1), countdown=1.0)
        assert client.status(task_id) == "SCHEDULED"
        assert client.result(task_id) == 2
        took = time.time() - started
        print(f"a 1 s countdown answered after {took:.3f} s")
        assert 1.0 <= took < 1.0 + scaled(2)


def test_an_eta_task_survives_a_kill_of_the_broker(tmp_path: Path) -> None:
    with Cluster(store="tasks.db", directory=tmp_path) as cluster:
        cluster.start_broker()
        client = cluster.client()
        eta = datetime.now(UTC) + timedelta(seconds=2)
        task_id = client.apply_async("add", (20, 3), eta=eta)
        assert cluster.broker is not None
        cluster.broker.kill()
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        assert client.status(task_id) in ("SCHEDULED", "QUEUED", "FINISHED")
        assert client.result(task_id) == 23
        assert time.time() >= eta.timestamp()


def test_a_scheduled_task_can_be_revoked() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        client = cluster.client()
        task_id = client.apply_async("add", (1, 1), countdown=0.5)
        assert client.revoke(task_id) == "REVOKED"
        time.sleep(1.0)
        assert client.status(task_id) == "REVOKED"


def test_an_async_client_schedules_too() -> None:
    with Cluster() as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        handle = client.apply_async("add", (2, 2), countdown=0.3, priority=3, queue="default")
        wait_until(lambda: handle.status() in ("SCHEDULED", "QUEUED", "FINISHED"), 5)
        assert handle.result(timeout=scaled(10)) == 4
