"""Real brokers, nodes and workers on a Redis store (a redis-server of the test's own): what the store
contract checks call by call, end to end. Named queues, priorities, a countdown and a unique task on one
broker; a periodic task run once per period, and a rate limit kept, by two brokers sharing the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_helpers import RedisServer
from zerotask.client import AsyncClient
from zerotask.testing import Cluster, scaled, wait_until

pytest.importorskip("redis")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    made = RedisServer(tmp_path / "redis")
    made.start()
    yield made
    made.kill()


def test_queues_priorities_countdowns_and_unique_tasks_on_redis(server: RedisServer, tmp_path: Path) -> None:
    with Cluster(store=server.url, directory=tmp_path) as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks", extra=["--queues", "io"])  # it announces unique_sleep's unique_for too
        assert client.apply_async("add", (1, 2), queue="io").result(timeout=scaled(30)) == 3
        order = tmp_path / "order.txt"
        blocker = client.apply_async("sleep", (1.0,))  # queued first, runs first, while the rest queue
        low = [client.apply_async("append", (str(order), f"low{n}"), priority=0) for n in range(3)]
        high = client.apply_async("append", (str(order), "high"), priority=9)
        started = time.time()
        later = client.apply_async("add", (1, 1), countdown=1.0)
        assert later.status() == "SCHEDULED"
        blocking = cluster.client()  # its apply_async answers with the id of the task that holds the lock
        first = blocking.apply_async("unique_sleep", (0.2,))
        assert blocking.apply_async("unique_sleep", (0.2,)) == first
        cluster.start_node("tests.tasks", workers=1, extra=["--prefetch", "0"])
        for handle in (blocker, *low, high):
            handle.result(timeout=scaled(30))
        assert order.read_text().split() == ["high", "low0", "low1", "low2"]
        assert later.result(timeout=scaled(30)) == 2 and time.time() - started >= 1.0
        assert blocking.result(first) == 0.2


def test_two_brokers_on_one_redis_run_a_periodic_task_once_per_period(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = tmp_path / "ticks.txt"
    monkeypatch.setenv("ZEROTASK_TEST_TICKS", str(ticks))
    with Cluster(store=server.url) as one, Cluster(store=server.url) as two:
        for cluster in (one, two):
            cluster.start_broker()
            cluster.start_node("tests.periodic_tasks")
        wait_until(lambda: ticks.exists() and len(ticks.read_text().split()) >= 6, scaled(20), "six ticks")
    times = sorted(float(line) for line in ticks.read_text().split())
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    print(f"tick gaps: {', '.join(f'{gap:.3f}' for gap in gaps)}")
    # The first tick is the catch-up run of the slot just passed, which the next slot may follow closely.
    assert min(gaps[1:]) > 0.25, "a slot ran twice"  # the period is 0.5 s


def test_two_brokers_on_one_redis_share_a_rate_limit(server: RedisServer) -> None:
    with Cluster(store=server.url) as one, Cluster(store=server.url) as two:
        clients = []
        for cluster in (one, two):
            cluster.start_broker()
            cluster.start_node("tests.tasks", workers=2)
            clients.append(AsyncClient(cluster.endpoint))
        try:
            started = time.time()
            handles = [clients[n % 2].limited(n) for n in range(15)]
            ran = sorted(handle.result(timeout=scaled(30)) for handle in handles)
        finally:
            for client in clients:
                client.close()
    took = ran[-1] - started
    print(f"15 tasks limited to 5/s (a burst of 5) by two brokers ran over {took:.2f} s")
    assert took >= 1.6  # one bucket for both: 5 at once, then one every 0.2 s (two buckets: about 1 s)
