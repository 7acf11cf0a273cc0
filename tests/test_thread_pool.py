"""The thread pool (`zerotask node --pool thread`) and per-task pools (`@task(pool=...)`), on a real broker
and node (tasks in tests/tasks.py and tests/pool_tasks.py). What threads cannot do is documented in
zerotask/node/threads.py; these tests hold the pool to it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerotask import TaskError, TaskRevoked, tracing
from zerotask.client import AsyncClient, Client
from zerotask.testing import Cluster, ManagedProcess, scaled, wait_until

MODULES = ("tests.tasks", "tests.pool_tasks")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def thread_node(cluster: Cluster, workers: int = 2, *extra: str) -> ManagedProcess:
    cluster.start_broker()
    return cluster.start_node(*MODULES, workers=workers, extra=["--pool", "thread", *extra])


@pytest.fixture(scope="module")
def threads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Client]]:
    """One broker (with a small message limit) and one thread-pool node, for the tests that leave it as it was."""
    with Cluster(store="memory", directory=tmp_path_factory.mktemp("threads")) as cluster:
        cluster.start_broker("--max-message-bytes", "100000")
        cluster.start_node(*MODULES, workers=2, extra=["--pool", "thread"])
        yield cluster, cluster.client()


def test_results_and_errors_come_back_from_the_nodes_threads(threads: tuple[Cluster, Client]) -> None:
    cluster, client = threads
    assert client.add(2, 3) == 5
    ran = client.where()
    assert ran["pid"] == cluster.nodes[0].pid  # in the node's own process
    assert ran["thread"].startswith("zerotask-thread-")
    with pytest.raises(TaskError) as raised:
        client.fail("boom")
    assert (raised.value.type, raised.value.remote_message) == ("ValueError", "boom")
    with pytest.raises(TaskError) as raised:
        client.not_json()
    assert raised.value.type == "TypeError"
    assert client.add(1, 1) == 2  # errors cost the threads nothing


def test_many_short_tasks_all_come_back(threads: tuple[Cluster, Client]) -> None:
    cluster, _ = threads
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        handles = [client.add(i, 1) for i in range(3000)]
        assert [handle.result(scaled(30)) for handle in handles] == [i + 1 for i in range(3000)]


def test_an_outcome_over_the_brokers_limit_fails_clearly(threads: tuple[Cluster, Client]) -> None:
    _, client = threads
    assert len(client.text(40_000)) == 40_000
    with pytest.raises(TaskError) as raised:
        client.text(200_000)
    assert raised.value.type == "ResultTooLarge"


def test_a_task_in_a_thread_runs_under_its_callers_trace(threads: tuple[Cluster, Client]) -> None:
    _, client = threads
    with tracing.traced(TRACEPARENT):
        seen = client.traceparent_here()
    assert seen is not None and seen.split("-")[1] == TRACEPARENT.split("-")[1] and seen != TRACEPARENT


def test_a_process_task_on_a_thread_node_gets_a_worker_process(threads: tuple[Cluster, Client]) -> None:
    cluster, client = threads
    assert client.where_thread()["pid"] == cluster.nodes[0].pid
    in_process = client.where_process()
    assert in_process["pid"] != cluster.nodes[0].pid
    assert in_process["thread"] == "MainThread"


def test_a_thread_task_on_a_process_node_runs_in_the_nodes_threads(cluster: Cluster) -> None:
    cluster.start_broker()
    node = cluster.start_node(*MODULES, workers=2)
    client = cluster.client()
    assert client.where()["pid"] != node.pid  # the node's own kind: a worker process
    in_thread = client.where_thread()
    assert in_thread["pid"] == node.pid
    assert in_thread["thread"].startswith("zerotask-thread-")


def test_revoking_a_task_waiting_in_the_node_drops_it(cluster: Cluster, tmp_path: Path) -> None:
    thread_node(cluster, 1, "--prefetch", "10")
    client = cluster.client()
    first, second = tmp_path / "first", tmp_path / "second"
    running = client.submit("mark_then_sleep", str(first), 1.0)
    wait_until(first.exists, 20, "the first task to start")
    waiting = client.submit("mark_then_sleep", str(second), 0)
    wait_until(lambda: cluster.info()["nodes"][0]["tasks"] == 2, 10, "the node to hold both")
    assert client.revoke(waiting) == "REVOKED"
    assert client.result(running, timeout=scaled(20)) == "slept"
    with pytest.raises(TaskRevoked):
        client.result(waiting, timeout=scaled(5))
    assert client.add(1, 2) == 3  # the thread that would have run it is free
    assert not second.exists()


def test_revoking_a_running_task_discards_its_outcome(cluster: Cluster, tmp_path: Path) -> None:
    """A thread cannot be stopped: the task runs to its end, and what it returns goes nowhere."""
    thread_node(cluster, 1)
    client = cluster.client()
    started, finished = tmp_path / "started", tmp_path / "finished"
    task_id = client.submit("mark_then_sleep", str(started), 1.0, str(finished))
    wait_until(started.exists, 20, "the task to start")
    assert client.revoke(task_id) == "REVOKED"
    with pytest.raises(TaskRevoked):
        client.result(task_id, timeout=scaled(5))
    wait_until(finished.exists, 20, "the revoked task to run to its end")
    assert client.add(1, 2) == 3
    assert client.status(task_id) == "REVOKED"


def test_time_limit_answers_the_caller_and_abandons_the_thread(cluster: Cluster, tmp_path: Path) -> None:
    thread_node(cluster, 1)
    client = cluster.client()
    woke = tmp_path / "woke"
    began = time.monotonic()
    with pytest.raises(TaskError) as raised:
        client.limited_sleep(str(woke), 3.0)
    assert raised.value.type == "TimeLimitExceeded"
    assert time.monotonic() - began < scaled(2.5)  # at the limit (0.5 s), not when the task returned (3 s)
    assert not woke.exists()
    assert client.add(1, 2) == 3  # a new thread serves meanwhile
    wait_until(woke.exists, 20, "the abandoned thread to return")
    assert client.add(2, 2) == 4


def test_a_task_past_its_time_limit_is_retried_on_another_thread(cluster: Cluster, tmp_path: Path) -> None:
    thread_node(cluster, 1)
    assert cluster.client().limited_twice(str(tmp_path / "attempted")) == "second"


def test_sigterm_lets_a_running_task_finish_and_hands_back_the_rest(cluster: Cluster, tmp_path: Path) -> None:
    node = thread_node(cluster, 1, "--prefetch", "3")
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        started = tmp_path / "started"
        running = client.mark_then_sleep(str(started), 1.0)
        waiting = [client.add(i, 0) for i in range(3)]
        wait_until(started.exists, 20, "the first task to start")
        wait_until(lambda: cluster.info()["nodes"][0]["tasks"] == 4, 10, "the node to hold all four")
        node.signal(signal.SIGTERM)
        assert running.result(scaled(10)) == "slept"  # the running task finished
        assert node.process.wait(scaled(15)) == 0
        assert [handle.status() for handle in waiting] == ["QUEUED"] * 3  # handed back, not lost
        cluster.start_node(*MODULES, workers=1, extra=["--pool", "thread"])
        assert [handle.result(scaled(20)) for handle in waiting] == [0, 1, 2]


def test_a_task_that_exits_the_process_takes_a_thread_node_down(cluster: Cluster) -> None:
    """Documented: threads give no isolation. The broker sees a lost node."""
    node = thread_node(cluster, 1)
    cluster.client().submit("crash", 7)
    assert node.process.wait(scaled(20)) == 7
