"""Workflows (zerotask.canvas) with a real broker, nodes and workers: chain, group and chord, failures, the
AsyncClient's handles, a hostile definition, and a chord that outlives a ``kill -9`` of its broker.

(The rules are tested without processes in test_workflow_plan.py, the broker's side in test_core_workflows.py.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from zerotask import TaskError, UnknownMethod, UnknownTask, jsonrpc, wire
from zerotask.canvas import chain, chord, group, sig
from zerotask.client import AsyncClient
from zerotask.testing import Cluster, scaled, wait_until


def test_a_chain_hands_each_result_on(running: Cluster) -> None:
    client = running.client()
    workflow_id = client.apply_async(chain(sig("add", 1, 2), sig("mul", 10)))
    assert client.result(workflow_id) == 30
    assert client.status(workflow_id) == "FINISHED"
    assert client.result(f"{workflow_id}.0") == 3  # members are tasks, with ids made from the workflow's


def test_a_group_gives_its_results_in_order(running: Cluster) -> None:
    client = running.client()
    delays = [0.3, 0.0, 0.2, 0.1]  # they end in another order than they were given
    workflow_id = client.apply_async(group(sig("slow_add", n, 0, delay) for n, delay in enumerate(delays)))
    assert client.result(workflow_id) == [0, 1, 2, 3]


def test_a_chord_calls_its_callback_once_with_the_list(running: Cluster) -> None:
    client = running.client()
    counter = running.directory / "callback-runs"
    workflow = chord(group(sig("add", n, n) for n in range(10)), sig("tsum_counted", str(counter)))
    assert client.result(client.apply_async(workflow)) == 90
    assert counter.read_text().count("x") == 1


def test_nested_workflows(running: Cluster) -> None:
    client = running.client()
    workflow = chain(
        sig("add", 1, 2),
        group(sig("mul", 2), chain(sig("add", 1), sig("mul", 10))),
        chord([sig("tsum"), sig("tsum")], sig("tsum")),
        sig("add", 0.5),
    )
    assert client.result(client.apply_async(workflow)) == 92.5  # [6, 40] -> 46 twice -> 92, then + 0.5


def test_a_failing_member_fails_the_workflow_with_its_error(running: Cluster) -> None:
    client = running.client()
    workflow_id = client.apply_async(chain(sig("add", 1, 2), sig("fail", "boom").set(immutable=True), sig("mul", 10)))
    with pytest.raises(TaskError) as raised:
        client.result(workflow_id)
    assert raised.value.type == "ValueError" and raised.value.remote_message == "boom"
    assert client.status(workflow_id) == "FAILED"
    with pytest.raises(UnknownTask):
        client.status(f"{workflow_id}.2")  # the stage after the failure never existed


def test_a_task_no_node_serves_is_refused_at_once(running: Cluster) -> None:
    with pytest.raises(UnknownMethod):
        running.client().apply_async(chain(sig("add", 1, 2), sig("no_such_task")))


def test_an_async_client_gets_a_handle(running: Cluster) -> None:
    with AsyncClient(running.endpoint, timeout=scaled(30), **running.peer("client")) as client:
        handle = client.apply_async(chord(group(sig("slow_add", n, n, 0.2) for n in range(3)), sig("tsum")))
        assert handle.status() in ("RUNNING", "FINISHED")
        assert handle.result(timeout=scaled(30)) == 6
        assert handle.wait() == 6 and handle.done() and handle.status() == "FINISHED"
        assert client.result(handle.id) == 6

        async def together() -> list[Any]:
            handles = [client.apply_async(chain(sig("add", n, n), sig("mul", 10))) for n in range(5)]
            return await asyncio.gather(*handles)

        assert asyncio.run(together()) == [20 * n for n in range(5)]
        failing = client.apply_async(group(sig("add", 1, 1), sig("fail", "no")))
        with pytest.raises(TaskError):
            failing.result(timeout=scaled(30))
        assert client.apply_async(sig("add", 2, 3)).result(timeout=scaled(30)) == 5  # a lone sig is a task


def test_a_revoked_workflow_starts_nothing_more(running: Cluster) -> None:
    client = running.client()
    marker = running.directory / "after"
    workflow_id = client.apply_async(chain(sig("sleep", 1.0), sig("touch", str(marker)).set(immutable=True)))
    wait_until(lambda: client.status(f"{workflow_id}.0") == "RUNNING", scaled(10))
    assert client.revoke(workflow_id) == "REVOKED"
    time.sleep(1.5)  # past the time the first stage would have ended
    assert not marker.exists()
    assert client.status(f"{workflow_id}.0") == "REVOKED"


def test_a_hostile_definition_is_refused(running: Cluster) -> None:
    context = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.connect(running.endpoint)
        sock.rcvtimeo = int(scaled(10) * 1000)

        def ask(method: str, params: Any) -> dict[str, Any]:
            sock.send(jsonrpc.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}))
            answer: dict[str, Any] = jsonrpc.loads(sock.recv())
            return answer

        for bad in (
            {"chain": []},
            {"group": [{"task": "add", "args": [1, 1]}] * 10_001},
            {"task": "add", "args": "1, 1"},
            {"task": "zerotask.workflow"},
            {"chord": [{"task": "add"}], "callback": {"task": "tsum"}, "then": 1},
        ):
            assert ask(wire.WORKFLOW, {"workflow": bad})["error"]["code"] == jsonrpc.INVALID_PARAMS
        assert ask(wire.WORKFLOW, {"workflow": {"task": "add"}, "workflow_id": ""})["error"]["code"] == jsonrpc.INVALID_PARAMS
        assert "error" in ask(wire.SUBMIT, ["zerotask.workflow"])  # the reserved name is no task's


@pytest.mark.parametrize("shape", ["chain", "chord"])
def test_a_workflow_survives_a_kill_of_the_broker_and_its_callback_runs_once(tmp_path: Path, shape: str) -> None:
    counter = tmp_path / "callback-runs"
    workflow, expected = {
        "chain": (chain(sig("slow_add", 1, 2, 1.0), group(sig("mul", 10)), sig("tsum_counted", str(counter))), 30),
        "chord": (chord(group(sig("slow_add", n, n, 1.0) for n in range(4)), sig("tsum_counted", str(counter))), 12),
    }[shape]
    with Cluster(store="tasks.db", directory=tmp_path) as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=4)
        client = cluster.client()
        workflow_id = client.apply_async(workflow)
        wait_until(lambda: client.status(f"{workflow_id}.0") == "RUNNING", scaled(10))
        assert cluster.broker is not None
        cluster.broker.kill()  # kill -9, while the first members run
        cluster.start_broker()
        assert client.result(workflow_id) == expected
        time.sleep(0.5)  # a second run of the callback, were there one, would show by now
    assert counter.read_text().count("x") == 1
