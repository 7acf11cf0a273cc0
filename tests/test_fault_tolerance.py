"""No accepted task is lost when nodes, workers or the broker die: tests that kill real processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from zerotask import TaskError, TaskRevoked, jsonrpc
from zerotask.client import AsyncClient, Client
from zerotask.testing import Cluster, scaled, wait_until


def test_node_killed_under_load_loses_nothing(cluster: Cluster) -> None:
    cluster.start_broker()
    doomed = cluster.start_node("tests.tasks", workers=2)
    cluster.start_node("tests.tasks", workers=2)
    with AsyncClient(cluster.endpoint, timeout=scaled(60)) as client:
        handles = [client.slow_add(i, 1, 0.01) for i in range(400)]
        wait_until(lambda: sum(handle.done() for handle in handles) >= 40, 30, "some tasks to finish")
        doomed.kill()  # SIGKILL: no goodbye, tasks in its hands
        results = [handle.result(scaled(60)) for handle in handles]
    assert results == [i + 1 for i in range(400)]
    assert len(cluster.info()["nodes"]) == 1  # the dead node was noticed and dropped


def test_broker_killed_under_load_on_sqlite_loses_nothing(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    cluster.start_broker()
    cluster.start_node("tests.tasks", workers=2)
    cluster.start_node("tests.tasks", workers=2)
    blocking_result: list[Any] = []
    with AsyncClient(cluster.endpoint, timeout=scaled(90)) as client:
        handles = [client.slow_add(i, 1, 0.005) for i in range(600)]
        waiter = threading.Thread(
            target=lambda: blocking_result.append(Client(cluster.endpoint, timeout=scaled(90)).slow_add(1000, 1, 0.5))
        )
        waiter.start()
        wait_until(lambda: sum(handle.done() for handle in handles) >= 60, 30, "some tasks to finish")
        assert cluster.broker is not None
        cluster.broker.kill()  # SIGKILL under load
        time.sleep(0.5)
        cluster.start_broker()  # same store, same port; nodes and clients are not restarted
        results = [handle.result(scaled(90)) for handle in handles]
        waiter.join(scaled(90))
    assert results == [i + 1 for i in range(600)]
    assert blocking_result == [1001]
    assert len(cluster.info()["nodes"]) == 2  # both nodes came back by themselves


def test_worker_killed_mid_task_fails_it_clearly_and_is_replaced(running: Cluster, tmp_path: Path) -> None:
    client = running.client()
    pid_file = tmp_path / "worker.pid"
    task_id = client.submit("pid_then_sleep", str(pid_file), 30)
    wait_until(pid_file.exists, 20, "the task to start")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(TaskError) as raised:
        client.result(task_id, timeout=scaled(20))
    assert raised.value.type == "WorkerLost"
    assert client.status(task_id) == "FAILED"
    assert [client.add(i, i) for i in range(6)] == [2 * i for i in range(6)]


def test_worker_killed_mid_task_is_retried_when_the_task_allows(running: Cluster, tmp_path: Path) -> None:
    client = running.client()
    pid_file = tmp_path / "first-attempt.pid"
    task_id = client.submit("survive_kill", str(pid_file))
    wait_until(pid_file.exists, 20, "the first attempt to start")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert client.result(task_id, timeout=scaled(30)) == "second"


def test_retries_with_backoff_show_the_retry_state(running: Cluster, tmp_path: Path) -> None:
    client = running.client()
    attempts = tmp_path / "attempts"
    task_id = client.submit("flaky", str(attempts), 2)
    seen = set()
    deadline = time.monotonic() + scaled(20)
    while time.monotonic() < deadline:
        state = client.status(task_id)
        seen.add(state)
        if state == "FINISHED":
            break
        time.sleep(0.02)
    assert "RETRY" in seen
    assert client.result(task_id, timeout=scaled(10)) == 3
    assert len(attempts.read_text().splitlines()) == 3


def test_retries_run_out_then_the_task_fails(running: Cluster, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    with pytest.raises(TaskError) as raised:
        running.client().flaky(str(attempts), 10)
    assert raised.value.type == "ConnectionError"
    assert len(attempts.read_text().splitlines()) == 4  # the first try and three retries


def test_retry_on_limits_which_exceptions_retry(running: Cluster, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    with pytest.raises(TaskError) as raised:
        running.client().wrong_error(str(attempts))
    assert raised.value.type == "KeyError"
    assert len(attempts.read_text().splitlines()) == 1


def test_time_limit_kills_the_worker_and_fails_the_task(running: Cluster) -> None:
    client = running.client()
    started = time.monotonic()
    with pytest.raises(TaskError) as raised:
        client.overrun(30)
    assert raised.value.type == "TimeLimitExceeded"
    assert time.monotonic() - started < scaled(15)
    assert [client.add(i, 1) for i in range(4)] == [1, 2, 3, 4]  # the worker was replaced


def test_client_side_time_limit(running: Cluster) -> None:
    with Client(running.endpoint, timeout=scaled(20), time_limit=0.3) as client:
        with pytest.raises(TaskError) as raised:
            client.sleep(30)
        assert raised.value.type == "TimeLimitExceeded"
        assert client.add(1, 1) == 2


def test_revoked_queued_task_never_runs(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker()
    client = cluster.client()
    marker = tmp_path / "ran"
    task_id = client.submit("touch", str(marker))
    assert client.revoke(task_id) == "REVOKED"
    cluster.start_node("tests.tasks")
    assert client.add(1, 2) == 3  # the node is serving the queue
    with pytest.raises(TaskRevoked):
        client.result(task_id, timeout=scaled(5))
    assert client.status(task_id) == "REVOKED"
    assert not marker.exists()


def test_revoked_running_task_stops_its_worker(running: Cluster, tmp_path: Path) -> None:
    with AsyncClient(running.endpoint, timeout=scaled(20)) as client:
        pid_file = tmp_path / "worker.pid"
        handle = client.pid_then_sleep(str(pid_file), 60)
        wait_until(pid_file.exists, 20, "the task to start")
        pid = int(pid_file.read_text())
        assert handle.revoke() == "REVOKED"
        with pytest.raises(TaskRevoked):
            handle.result(scaled(10))
        wait_until(lambda: _gone(pid), 10, "the worker to die")
        assert [client.add(i, 0).result(scaled(10)) for i in range(4)] == [0, 1, 2, 3]


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie); it may vanish between two looks."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_revoke_survives_a_broker_restart(sqlite_cluster: Cluster, tmp_path: Path) -> None:
    cluster = sqlite_cluster
    cluster.start_broker()
    client = cluster.client()
    marker = tmp_path / "ran"
    task_id = client.submit("touch", str(marker))
    client.revoke(task_id)
    assert cluster.broker is not None
    cluster.broker.kill()
    cluster.start_broker()
    cluster.start_node("tests.tasks")
    assert client.add(2, 2) == 4
    assert client.status(task_id) == "REVOKED"
    assert not marker.exists()


def test_sigterm_to_a_node_finishes_running_and_hands_back_the_rest(cluster: Cluster) -> None:
    cluster.start_broker()
    node = cluster.start_node("tests.tasks", workers=1, extra=["--prefetch", "3"])
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        handles = [client.slow_add(i, 0, 1.0) for i in range(4)]
        wait_until(lambda: handles[0].status() == "RUNNING", 20, "the first task to run")
        wait_until(lambda: cluster.info()["nodes"][0]["tasks"] == 4, 10, "the node to hold all four")
        node.signal(signal.SIGTERM)
        assert handles[0].result(scaled(10)) == 0  # the running task finished
        assert node.process.wait(scaled(15)) == 0
        assert [handle.status() for handle in handles[1:]] == ["QUEUED"] * 3  # handed back, not lost
        cluster.start_node("tests.tasks", workers=2)
        assert [handle.result(scaled(20)) for handle in handles] == [0, 1, 2, 3]


def test_sigterm_to_the_broker_flushes_the_store(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    cluster.start_broker()
    client = cluster.client()
    task_ids = [client.submit("add", i, 1) for i in range(50)]
    assert cluster.broker is not None
    assert cluster.broker.stop() == 0
    cluster.start_broker()
    cluster.start_node("tests.tasks")
    assert [client.result(task_id, timeout=scaled(20)) for task_id in task_ids] == [i + 1 for i in range(50)]


def test_a_node_declared_dead_runs_its_task_again_when_it_comes_back(cluster: Cluster) -> None:
    """Only the node holding a task may end it: the late result of a node declared dead is ignored (it
    could be anyone's), the node connects again, and the task, queued again, runs again."""
    cluster.start_broker()
    node = cluster.start_node("tests.tasks", workers=1)
    client = cluster.client()
    task_id = client.submit("sleep", 4.0)
    wait_until(lambda: client.status(task_id) == "RUNNING", 20, "the task to run")
    node.signal(signal.SIGSTOP)  # frozen: silent, but its worker keeps running the task
    try:
        wait_until(lambda: not cluster.info()["nodes"], 20, "the broker to declare the node dead")
        assert client.status(task_id) == "QUEUED"  # back in the queue, no other node to take it
    finally:
        node.signal(signal.SIGCONT)
    assert client.result(task_id, timeout=scaled(30)) == 4.0  # from the run after it connected again
    wait_until(lambda: len(cluster.info()["nodes"]) == 1, 20, "the node to connect again")


def test_worker_that_segfaults_fails_its_task_and_is_replaced(running: Cluster) -> None:
    client = running.client()
    with pytest.raises(TaskError) as raised:
        client.segfault()
    assert raised.value.type == "WorkerLost"
    assert "exit code -11" in raised.value.remote_message  # killed by SIGSEGV
    assert [client.add(i, 1) for i in range(4)] == [1, 2, 3, 4]


def test_no_peer_can_change_the_retry_policy_of_other_peers_tasks(running: Cluster, tmp_path: Path) -> None:
    """A peer announcing itself as a node used to set the retry options of every task of a name it
    listed (the last connect won; a bad value left tasks stuck). Now the policy comes from the @task of
    the node that ran the task, and what a connect says about options is ignored."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        liar = context.socket(zmq.DEALER)
        liar.setsockopt(zmq.LINGER, 0)
        liar.connect(running.endpoint)
        options = {"flaky": {"retries": 0}, "fail": {"retries": "lots", "retry_backoff_s": -1}}
        connect = {"node": "liar", "methods": options, "workers": 1, "credit": 0}
        liar.send(jsonrpc.dumps(jsonrpc.request("zerotask.broker.connect", connect, 1)))
        assert liar.poll(int(scaled(10) * 1000)), "the broker did not answer the connect"
        assert "result" in jsonrpc.loads(liar.recv())
        attempts = tmp_path / "attempts"
        assert running.client().flaky(str(attempts), 2) == 3  # two failures retried, as @task(retries=3) says
        with pytest.raises(TaskError):
            running.client().fail("still fails at once")
    finally:
        context.destroy(linger=0)
