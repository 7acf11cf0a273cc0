"""The blocking Client against a real broker and a real node with real worker processes."""

from __future__ import annotations

import time

import pytest

from zerotask import TaskError, TaskTimeout, UnknownMethod, UnknownTask
from zerotask.client import Client
from zerotask.exceptions import InvalidParams
from zerotask.testing import Cluster, scaled, wait_until


def test_call_returns_the_result(running: Cluster) -> None:
    client = running.client()
    assert client.add(5, 6) == 11
    assert client.subtract(5, 6) == -1
    assert client.subtract(minuend=5, subtrahend=6) == -1
    assert client.call("add", 1.5, b=2) == 3.5


def test_namespaced_task_is_called_through_attributes(running: Cluster) -> None:
    client = running.client()
    assert client.namespaces.are.awesome.foo() == "foo"
    assert client.namespaces.are.awesome.foo("bar") == "bar"


def test_submit_status_result(running: Cluster) -> None:
    client = running.client()
    task_id = client.submit("add", 2, 3)
    assert isinstance(task_id, str) and task_id
    assert client.result(task_id, timeout=scaled(10)) == 5
    assert client.status(task_id) == "FINISHED"


def test_task_that_raises_gives_task_error_with_remote_details(running: Cluster) -> None:
    client = running.client()
    with pytest.raises(TaskError) as raised:
        client.fail("boom")
    assert raised.value.type == "ValueError"
    assert raised.value.remote_message == "boom"
    assert "raise ValueError(message)" in raised.value.traceback
    task_id = client.submit("fail", "again")
    with pytest.raises(TaskError):
        client.result(task_id, timeout=scaled(10))
    assert client.status(task_id) == "FAILED"


def test_misspelled_method_raises_unknown_method_promptly(running: Cluster) -> None:
    client = running.client(timeout_s=5)
    with pytest.raises(UnknownMethod):
        client.ad(5, 6)
    with pytest.raises(UnknownMethod):
        client.submit("ad", 5, 6)


def test_wrong_arguments_raise_invalid_params(running: Cluster) -> None:
    with pytest.raises(InvalidParams):
        running.client().add(1)


def test_unknown_task_id_is_an_error_not_pending(running: Cluster) -> None:
    client = running.client()
    with pytest.raises(UnknownTask):
        client.status("no-such-task")
    with pytest.raises(UnknownTask):
        client.result("no-such-task", timeout=scaled(5))


def test_result_wait_times_out(running: Cluster) -> None:
    client = running.client()
    task_id = client.submit("sleep", 2)
    with pytest.raises(TaskTimeout):
        client.result(task_id, timeout=0.2)
    assert client.result(task_id, timeout=scaled(10)) == 2


def test_task_waits_for_a_node_when_none_is_connected(cluster: Cluster) -> None:
    cluster.start_broker()
    client = cluster.client()
    task_id = client.submit("add", 20, 22)
    assert client.status(task_id) == "QUEUED"
    cluster.start_node("tests.tasks")
    assert client.result(task_id, timeout=scaled(20)) == 42


def test_result_that_is_not_json_fails_clearly(running: Cluster) -> None:
    with pytest.raises(TaskError) as raised:
        running.client().not_json()
    assert raised.value.type == "TypeError"
    assert "not JSON" in raised.value.remote_message


def test_crashed_worker_fails_its_task_and_is_replaced(running: Cluster) -> None:
    client = running.client()
    with pytest.raises(TaskError) as raised:
        client.crash(3)
    assert raised.value.type == "WorkerLost"
    assert "exit code 3" in raised.value.remote_message
    # the node still has two working workers
    assert [client.add(i, 1) for i in range(10)] == [i + 1 for i in range(10)]


def test_info_lists_nodes_and_their_methods(running: Cluster) -> None:
    info = running.client().info()
    assert len(info["nodes"]) == 1
    assert "add" in info["nodes"][0]["methods"]
    assert info["nodes"][0]["workers"] == 2


def test_outcomes_are_forgotten_after_the_result_ttl(cluster: Cluster) -> None:
    cluster.start_broker("--result-ttl", "0.5")
    cluster.start_node("tests.tasks")
    client = cluster.client()
    task_id = client.submit("add", 1, 1)
    assert client.result(task_id, timeout=scaled(10)) == 2
    wait_until(lambda: _unknown(client, task_id), 10, "the outcome to expire")
    waiting = client.submit("sleep", 2)  # an unfinished task is never expired
    time.sleep(1.2)
    assert client.status(waiting) in {"ASSIGNED", "RUNNING"}


def _unknown(client: Client, task_id: str) -> bool:
    try:
        client.status(task_id)
    except UnknownTask:
        return True
    return False


def test_a_result_nested_too_deep_for_the_wire_fails_clearly(running: Cluster) -> None:
    client = running.client()
    assert client.nested(150) is not None
    with pytest.raises(TaskError) as raised:
        client.nested(252)  # orjson writes 254 levels; the broker adds a few around a result
    assert "levels deep" in raised.value.remote_message
    assert client.add(1, 1) == 2  # the broker is still serving


def test_client_and_async_client_share_one_control_api() -> None:
    """Same names, same parameters: code written against one works against the other."""
    import inspect

    from zerotask.client import AsyncClient, ControlAPI

    for name in ("call", "submit", "status", "result", "revoke", "info"):
        expected = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(ControlAPI, name)).parameters.values()]
        for cls in (Client, AsyncClient):
            found = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]
            assert found == expected, f"{cls.__name__}.{name}"
