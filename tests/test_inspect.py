"""What an operator sees and does: zerotask.broker.inspect, tasks, task, retry and purge on a real broker
and nodes, and the commands that call them."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from zerotask import wire
from zerotask.client import Client
from zerotask.exceptions import Forbidden, InvalidParams, TaskError, TaskRevoked, UnknownTask
from zerotask.testing import Cluster, scaled, wait_until


def admin(cluster: Cluster) -> Client:
    return cluster.client(key="admin")


def command(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    keys = cluster.keys.peer_args("admin") if cluster.keys is not None else []
    line = [sys.executable, "-m", "zerotask.cli", *args, "--broker", cluster.endpoint, *keys]
    return subprocess.run(line, capture_output=True, text=True, timeout=scaled(60), stdin=subprocess.DEVNULL)


def inspect(cluster: Cluster) -> dict[str, Any]:
    with Client(cluster.endpoint, timeout=scaled(10), **cluster.peer("admin")) as client:
        seen: dict[str, Any] = client.rpc(wire.INSPECT, {})
    return seen


def test_inspect_shows_queue_depths_states_and_a_connected_node(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker()
    client = cluster.client()
    for value in range(3):
        client.submit("double", value)
    client.submit("fails_once", str(tmp_path / "flag"))
    seen = inspect(cluster)
    assert seen["nodes"] == []
    assert [(q["name"], q["depth"]) for q in seen["queues"]] == [("double", 3), ("fails_once", 1)]
    assert all(q["oldest_s"] >= 0 for q in seen["queues"])
    assert seen["states"]["QUEUED"] == 4 and set(seen["states"]) == {*wire.FINAL_STATES, "QUEUED", "ASSIGNED", "RUNNING", "RETRY"}
    assert seen["throughput"]["submitted_per_s"] > 0 and seen["uptime_s"] > 0
    cluster.start_node("tests.inspect_tasks", workers=1)
    ended = (wire.FINISHED, wire.FAILED)
    wait_until(lambda: [inspect(cluster)["states"][state] for state in ended] == [3, 1], scaled(30), "every task to end")
    seen = inspect(cluster)
    (node,) = seen["nodes"]
    assert node["methods"] == ["double", "fails_once"] and node["workers"] == 1
    assert node["finished"] == 4 and node["busy"] == 0 and 0 <= node["last_seen_s"] < 10
    assert seen["queues"] == []
    assert (seen["states"]["FINISHED"], seen["states"]["FAILED"], seen["states"]["QUEUED"]) == (3, 1, 0)
    assert seen["throughput"]["finished_per_s"] > 0


def test_a_failed_task_is_listed_with_its_error_and_retry_runs_it_again(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker()
    cluster.start_node("tests.inspect_tasks", workers=1)
    client = cluster.client()
    flag = str(tmp_path / "flag")
    task_id = client.submit("fails_once", flag)
    with pytest.raises(TaskError):
        client.result(task_id)
    operator = admin(cluster)
    (listed,) = operator.rpc(wire.TASKS, {"state": "FAILED"})
    assert (listed["task_id"], listed["method"], listed["state"], listed["attempts"]) == (task_id, "fails_once", "FAILED", 0)
    assert "first run fails" in listed["error"]["message"] and listed["finished_at"] >= listed["created_at"]
    described = operator.rpc(wire.TASK, {"task_id": task_id})
    assert (described["args"], described["state"], described["error"]["code"]) == ([flag], "FAILED", wire.TASK_FAILED)
    failed = command(cluster, "failed")
    assert failed.returncode == 0 and task_id in failed.stdout and "first run fails" in failed.stdout
    retried = command(cluster, "retry", task_id)
    assert retried.returncode == 0 and f"{task_id} QUEUED" in retried.stdout
    assert client.result(task_id) == "ok"
    described = operator.rpc(wire.TASK, {"task_id": task_id})
    assert (described["state"], described["result"], described["attempts"]) == ("FINISHED", "ok", 0)
    assert operator.rpc(wire.TASKS, {"state": "FAILED"}) == []
    with pytest.raises(InvalidParams):
        operator.rpc(wire.RETRY_TASK, {"task_id": task_id})  # FINISHED: not for retry
    with pytest.raises(UnknownTask):
        operator.rpc(wire.RETRY_TASK, {"task_id": "no-such-task"})
    with pytest.raises(UnknownTask):
        operator.rpc(wire.TASK, {"task_id": "no-such-task"})


def test_purge_empties_a_queue_and_waiting_callers_get_task_revoked(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker()  # no node: the tasks stay queued
    client = cluster.client()
    task_ids = [client.submit("double", value) for value in range(5)]
    kept = client.submit("fails_once", str(tmp_path / "flag"))
    answers: list[BaseException | Any] = []

    def wait_for_first() -> None:
        with Client(cluster.endpoint, timeout=scaled(30), **cluster.peer("client")) as waiter:
            try:
                answers.append(waiter.result(task_ids[0]))
            except BaseException as error:  # noqa: BLE001 - the error is the answer checked below
                answers.append(error)

    thread = threading.Thread(target=wait_for_first)
    thread.start()
    wait_until(lambda: inspect(cluster)["states"]["QUEUED"] == 6, scaled(10), "the tasks to be queued")
    purged = command(cluster, "purge", "double", "--yes")
    thread.join(scaled(30))
    assert purged.returncode == 0 and "purged 5" in purged.stdout
    assert len(answers) == 1 and isinstance(answers[0], TaskRevoked)
    assert [client.status(task_id) for task_id in task_ids] == ["REVOKED"] * 5
    assert client.status(kept) == "QUEUED"
    seen = inspect(cluster)
    assert [(q["name"], q["depth"]) for q in seen["queues"]] == [("fails_once", 1)]
    assert (seen["states"]["REVOKED"], seen["states"]["QUEUED"]) == (5, 1)
    assert admin(cluster).rpc(wire.PURGE, {"method": "double"}) == {"purged": 0, "more": False}


def test_inspect_command_prints_nodes_queues_states_and_throughput(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.client().submit("double", 1)
    done = command(cluster, "inspect")
    assert done.returncode == 0, done.stderr
    for heading in ("NODES", "QUEUES", "TASKS", "THROUGHPUT"):
        assert heading in done.stdout
    assert "(none connected)" in done.stdout
    assert any(line.split()[:2] == ["double", "1"] for line in done.stdout.splitlines())
    as_json = command(cluster, "inspect", "--json")
    assert '"QUEUED":1' in as_json.stdout


def test_counts_by_state_are_right_after_a_restart_on_sqlite(sqlite_cluster: Cluster) -> None:
    sqlite_cluster.start_broker()
    node = sqlite_cluster.start_node("tests.inspect_tasks", workers=1)
    client = sqlite_cluster.client()
    assert [client.double(value) for value in range(3)] == [0, 2, 4]
    with pytest.raises(TaskError):
        client.fails_once(str(sqlite_cluster.directory / "flag"))
    node.stop()
    sqlite_cluster.nodes.remove(node)
    client.submit("double", 9)
    client.close()
    assert sqlite_cluster.broker is not None
    sqlite_cluster.broker.stop()
    sqlite_cluster.start_broker()
    states = inspect(sqlite_cluster)["states"]
    assert (states["FINISHED"], states["FAILED"], states["QUEUED"], states["ASSIGNED"]) == (3, 1, 1, 0)


def test_with_curve_the_operator_methods_are_for_admin_keys_only(tmp_path: Path) -> None:
    with Cluster(store="memory", directory=tmp_path, curve=True) as cluster:
        cluster.start_broker()
        with pytest.raises(Forbidden):
            cluster.client().rpc(wire.INSPECT, {})
        assert admin(cluster).rpc(wire.INSPECT, {})["nodes"] == []
