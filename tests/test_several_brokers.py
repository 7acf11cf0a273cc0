"""Several brokers on one Redis, and Redis itself failing: real brokers, nodes and redis-servers.

Each test starts a redis-server of its own (zerotask.testing_redis), with the append-only file on, so
that it can kill, pause or fail it over; the brokers share it through ``--store redis://...``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerotask.canvas import chain, chord, group, sig
from zerotask.client import AsyncClient, Client
from zerotask.exceptions import StoreUnavailable
from zerotask.testing import Cluster, scaled, wait_until
from zerotask.testing_redis import RedisServer, Sentinel, redis_available

pytestmark = pytest.mark.skipif(redis_available() is not None, reason=str(redis_available()))


def on(store: str, directory: Path) -> Cluster:
    """A Cluster (no process yet) on ``store``, its logs in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return Cluster(store=store, directory=directory)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def two_brokers(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """Brokers A and B on one Redis, no nodes yet."""
    url = redis_server.url
    with on(url, tmp_path / "a") as a, on(url, tmp_path / "b") as b:
        a.start_broker()
        b.start_broker()
        yield a, b


def call_until_answered(client: Client, timeout_s: float, *args: int) -> tuple[int, float]:
    """``client.add(*args)``, again while the broker says its store is unavailable; returns the result
    and how long it took."""
    started = time.monotonic()
    while True:
        try:
            return client.add(*args), time.monotonic() - started
        except StoreUnavailable:
            if time.monotonic() - started > scaled(timeout_s):
                raise
            time.sleep(0.05)


# ---- several brokers -------------------------------------------------------------------------------


def test_a_task_submitted_at_one_broker_runs_on_a_node_of_another(two_brokers: tuple[Cluster, Cluster]) -> None:
    a, b = two_brokers
    b.start_node("tests.tasks")  # only broker B has a node
    assert a.client().add(2, 3) == 5
    with AsyncClient(a.endpoint) as client:
        handles = [client.add(n, n) for n in range(300)]
        assert [handle.result(timeout=scaled(30)) for handle in handles] == [2 * n for n in range(300)]


def test_both_brokers_see_one_queue(two_brokers: tuple[Cluster, Cluster]) -> None:
    a, b = two_brokers
    with AsyncClient(a.endpoint) as client:
        handles = [client.add(n, 1) for n in range(50)]
        wait_until(lambda: b.info()["queued"].get("add") == 50, 10, "broker B to see A's queue")
        b.start_node("tests.tasks")
        a.start_node("tests.tasks")
        assert sorted(handle.result(timeout=scaled(30)) for handle in handles) == [n + 1 for n in range(50)]


def test_a_broker_that_stops_answering_has_its_tasks_run_by_another(two_brokers: tuple[Cluster, Cluster]) -> None:
    """A's lease runs out while it is stopped (its node's task held with it): B queues the task again and
    its own node runs it; the caller waiting at B gets one outcome."""
    a, b = two_brokers
    a.start_node("tests.tasks")
    client = b.client()
    task_id = client.submit("sleep", 1.0)
    wait_until(lambda: client.status(task_id) in ("ASSIGNED", "RUNNING"), 10, "A's node to take the task")
    assert a.broker is not None
    a.broker.signal(signal.SIGSTOP)
    try:
        b.start_node("tests.tasks")
        started = time.monotonic()
        assert client.result(task_id, timeout=scaled(30)) == 1.0
        print(f"answered {time.monotonic() - started:.1f} s after broker A stopped")
    finally:
        a.broker.signal(signal.SIGCONT)
    assert client.status(task_id) == "FINISHED"


def test_a_workflow_runs_across_two_brokers(two_brokers: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    """A chain and a chord started at broker A whose members run on broker B's node: the workflow advances
    wherever its members end, and the chord's callback runs once."""
    a, b = two_brokers
    b.start_node("tests.tasks", workers=2)
    client = a.client()
    assert client.result(client.apply_async(chain(sig("add", 1, 2), sig("mul", 10)))) == 30
    runs = tmp_path / "callback-runs"
    workflow = chord(group(sig("add", 1, 1), sig("add", 2, 2), sig("add", 3, 3)), sig("tsum_counted", str(runs)))
    assert client.result(client.apply_async(workflow)) == 12
    assert len(runs.read_text().split()) == 1


# ---- Redis fails --------------------------------------------------------------------------------------


def test_while_redis_is_down_submits_are_refused_and_service_resumes_by_itself(redis_server: RedisServer, tmp_path: Path) -> None:
    with on(redis_server.url, tmp_path / "a") as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        client = cluster.client(timeout_s=10)
        assert client.add(1, 1) == 2
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            for _ in range(100):  # the first call after the kill may still be acknowledged... and then wait
                try:
                    client.add(1, 2)
                except TimeoutError:
                    continue
        refused_after = time.monotonic() - started
        print(f"refused {refused_after:.2f} s after Redis was killed")
        redis_server.start()
        result, took = call_until_answered(client, 20, 2, 2)
        assert result == 4
        print(f"answered again {took:.2f} s after Redis came back")


def test_acknowledged_tasks_survive_a_kill_of_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    with on(redis_server.url, tmp_path / "a") as cluster:
        cluster.start_broker()
        with Client(cluster.endpoint, timeout=scaled(10)) as client:
            task_ids = [client.submit("add", n, 1) for n in range(200)]  # each answered: acknowledged
        redis_server.kill()
        redis_server.start()
        cluster.start_node("tests.tasks")
        client = cluster.client()
        results = [call_until_answered_result(client, task_id) for task_id in task_ids]
        assert results == [n + 1 for n in range(200)]


def call_until_answered_result(client: Client, task_id: str) -> int:
    deadline = time.monotonic() + scaled(30)
    while True:
        try:
            result: int = client.result(task_id)
            return result
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_sentinel_failover_of_redis_is_survived(tmp_path: Path) -> None:
    master = RedisServer(tmp_path / "master").start()
    replica = master.replica(tmp_path / "replica").start()
    sentinel = Sentinel(tmp_path / "sentinel", master)
    try:
        with on(sentinel.url, tmp_path / "a") as cluster:
            cluster.start_broker()
            cluster.start_node("tests.tasks")
            client = cluster.client(timeout_s=10)
            assert client.add(1, 2) == 3
            time.sleep(1.5)  # the sentinel learns of the replica from the master
            sentinel.failover()
            master.kill()  # no way back to the old master
            result, took = call_until_answered(client, 30, 20, 3)
            assert result == 23
            print(f"answered {took:.2f} s after the failover")
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()
