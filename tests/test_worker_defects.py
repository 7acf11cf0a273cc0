"""A worker that dies in a batch, a task revoked in a batch, and errors that used to kill the worker:
tests on a real broker and node (tasks in tests/tasks.py and tests/defect_tasks.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zerotask import TaskError, TaskRevoked, jsonrpc, wire
from zerotask.client import AsyncClient, Client
from zerotask.testing import Cluster, scaled, wait_until

MODULES = ("tests.tasks", "tests.defect_tasks")


def _batching_node(cluster: Cluster) -> None:
    """A broker and one node with one worker, holding enough tasks to hand them over in batches."""
    cluster.start_broker()
    cluster.start_node(*MODULES, workers=1, extra=["--prefetch", "1000"])


def _warm_up(cluster: Cluster) -> None:
    """Run short tasks until the node has measured them as short: then it hands over several at once."""
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        handles = [client.add(i, 1) for i in range(400)]
        assert [handle.result(scaled(30)) for handle in handles] == [i + 1 for i in range(400)]


def _submit_together(cluster: Cluster, *calls: tuple[str, list[Any]]) -> list[str]:
    """Submit tasks in one JSON-RPC batch: the broker assigns them in one message, so an idle worker
    that measured tasks as short gets them as one batch. Returns their ids."""
    task_ids = [uuid.uuid4().hex for _ in calls]
    batch = [
        jsonrpc.notification(wire.SUBMIT, {"method": method, "args": args, "task_id": task_id})
        for (method, args), task_id in zip(calls, task_ids, strict=True)
    ]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        submitter = context.socket(zmq.DEALER)
        submitter.setsockopt(zmq.LINGER, int(scaled(5) * 1000))
        submitter.connect(cluster.endpoint)
        submitter.send(jsonrpc.dumps(batch))
        submitter.close()  # lingers until the batch is out
    finally:
        context.term()
    return task_ids


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_worker_dying_mid_batch_fails_only_the_task_it_was_running(cluster: Cluster, how: str) -> None:
    _batching_node(cluster)
    with AsyncClient(cluster.endpoint, timeout=scaled(60)) as client:
        adds = [client.add(i, 1) for i in range(300)]
        doomed = client.die(how)
        adds += [client.add(i, 1) for i in range(300, 600)]
        lost = [handle.id for handle in adds if _failed(handle)]
        assert lost == [], f"{len(lost)} add(s) failed for the crash of another task"
        assert [handle.result(scaled(60)) for handle in adds] == [i + 1 for i in range(600)]
        with pytest.raises(TaskError) as raised:
            doomed.result(scaled(60))
    assert raised.value.type == "WorkerLost"


def _failed(handle: Any) -> bool:
    try:
        handle.result(scaled(60))
    except TaskError:
        return True
    return False


def test_revoking_a_task_waiting_in_a_batch_spares_the_running_neighbour(cluster: Cluster, tmp_path: Path) -> None:
    _batching_node(cluster)
    _warm_up(cluster)
    pid_file, marker = tmp_path / "worker.pid", tmp_path / "ran"
    running_id, waiting_id = _submit_together(cluster, ("pid_after", [str(pid_file), 1.0]), ("touch", [str(marker)]))
    client = cluster.client()
    wait_until(pid_file.exists, 20, "the first task to start")
    pid = int(pid_file.read_text())
    assert client.revoke(waiting_id) == "REVOKED"
    assert client.result(running_id, timeout=scaled(20)) == pid  # ran once, in a worker nobody killed
    with pytest.raises(TaskRevoked):
        client.result(waiting_id, timeout=scaled(10))
    assert not marker.exists()
    assert client.pid() == pid  # the same worker serves on


def test_revoking_the_running_task_of_a_batch_stops_it_and_runs_the_rest(cluster: Cluster, tmp_path: Path) -> None:
    _batching_node(cluster)
    _warm_up(cluster)
    pid_file = tmp_path / "worker.pid"
    running_id, waiting_id = _submit_together(cluster, ("pid_after", [str(pid_file), 60]), ("add", [2, 3]))
    client = cluster.client()
    wait_until(pid_file.exists, 20, "the first task to start")
    pid = int(pid_file.read_text())
    assert client.revoke(running_id) == "REVOKED"
    with pytest.raises(TaskRevoked):
        client.result(running_id, timeout=scaled(10))
    assert client.result(waiting_id, timeout=scaled(20)) == 5
    assert client.pid() != pid  # the worker was killed and replaced


# ---- errors that used to kill the worker -------------------------------------------------------


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One broker and one node with one worker, for all the error tests; a client to it."""
    with Cluster(store="memory", directory=tmp_path_factory.mktemp("errors")) as cluster:
        cluster.start_broker()
        cluster.start_node(*MODULES, workers=1)
        yield cluster.client()


@pytest.mark.parametrize(
    ("kind", "type_name", "message"),
    [
        ("unprintable", "tests.defect_tasks.UnprintableError", "<unprintable tests.defect_tasks.UnprintableError>"),
        ("surrogate", "ValueError", "bad \\ud800 text"),
        ("system_exit", "SystemExit", "3"),
        ("keyboard_interrupt", "KeyboardInterrupt", ""),
        ("generator_exit", "GeneratorExit", ""),
        ("custom_base", "tests.defect_tasks.CustomBaseException", "beyond Exception"),
    ],
)
def test_task_error_is_reported_and_the_worker_serves_on(serving: Client, kind: str, type_name: str, message: str) -> None:
    pid = serving.pid()
    with pytest.raises(TaskError) as raised:
        serving.raise_kind(kind)
    assert (raised.value.type, raised.value.remote_message) == (type_name, message)
    assert type_name.rsplit(".", 1)[-1] in raised.value.traceback
    assert serving.pid() == pid


def test_result_with_a_lone_surrogate_fails_as_not_json(serving: Client) -> None:
    pid = serving.pid()
    with pytest.raises(TaskError) as raised:
        serving.surrogate_result()
    assert raised.value.type == "TypeError"
    assert "surrogate_result is not JSON" in raised.value.remote_message
    assert serving.pid() == pid
