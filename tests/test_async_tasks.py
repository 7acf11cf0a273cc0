"""``async def`` tasks in both pools, on a real broker and node (tasks in tests/pool_tasks.py): results,
errors, concurrency up to ``--concurrency``, time limits and revoke by cancellation, and sync and async
tasks handed over together."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zerotask import TaskError, TaskRevoked, jsonrpc, tracing, wire
from zerotask.client import AsyncClient, Client
from zerotask.testing import Cluster, scaled, wait_until

MODULES = ("tests.tasks", "tests.pool_tasks")
POOLS = ["process", "thread"]
CONCURRENCY = 8
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module", params=POOLS)
def serving(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Client]]:
    """A broker and one node of each pool, one worker, ``--concurrency CONCURRENCY``."""
    with Cluster(store="memory", directory=tmp_path_factory.mktemp(f"async-{request.param}")) as cluster:
        cluster.start_broker()
        cluster.start_node(*MODULES, workers=1, extra=["--pool", request.param, "--concurrency", str(CONCURRENCY)])
        yield cluster, cluster.client()


def test_async_task_returns_its_result(serving: tuple[Cluster, Client]) -> None:
    _, client = serving
    napped = client.nap(0.01)
    assert napped["ended"] >= napped["started"] + 0.01


def test_async_task_error_is_the_callers_error(serving: tuple[Cluster, Client]) -> None:
    _, client = serving
    with pytest.raises(TaskError) as raised:
        client.async_fail("async boom")
    assert (raised.value.type, raised.value.remote_message) == ("ValueError", "async boom")
    assert "async_fail" in raised.value.traceback
    with pytest.raises(TaskError) as raised:
        client.async_not_json()
    assert raised.value.type == "TypeError"


def test_async_tasks_run_concurrently_up_to_the_concurrency(serving: tuple[Cluster, Client]) -> None:
    cluster, _ = serving
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        began = time.monotonic()
        handles = [client.nap(0.5) for _ in range(CONCURRENCY)]
        naps = [handle.result(scaled(30)) for handle in handles]
        elapsed = time.monotonic() - began
    assert max(nap["started"] for nap in naps) < min(nap["ended"] for nap in naps)  # all at once
    assert len({nap["pid"] for nap in naps}) == 1  # in one worker
    assert elapsed < scaled(CONCURRENCY * 0.5 / 2)  # one at a time would take 4 s


def test_async_task_past_its_time_limit_is_cancelled(serving: tuple[Cluster, Client], tmp_path: Path) -> None:
    _, client = serving
    before = client.nap(0)["pid"]
    woke = tmp_path / "woke"
    began = time.monotonic()
    with pytest.raises(TaskError) as raised:
        client.async_overrun(str(woke), 2.0)
    assert raised.value.type == "TimeLimitExceeded"
    assert time.monotonic() - began < scaled(1.4)  # cancelled at its limit (0.5 s), before the node's backstop
    time.sleep(2.0)
    assert not woke.exists()  # it never got past its await
    assert client.nap(0)["pid"] == before  # no worker was killed for it


def test_revoking_a_running_async_task_cancels_it(serving: tuple[Cluster, Client], tmp_path: Path) -> None:
    _, client = serving
    before = client.nap(0)["pid"]
    started, finished = tmp_path / "started", tmp_path / "finished"
    task_id = client.submit("async_mark_then_nap", str(started), 2.0, str(finished))
    wait_until(started.exists, 20, "the task to start")
    assert client.revoke(task_id) == "REVOKED"
    with pytest.raises(TaskRevoked):
        client.result(task_id, timeout=scaled(5))
    time.sleep(2.5)
    assert not finished.exists()  # cancelled where it awaited
    assert client.nap(0)["pid"] == before  # its worker serves on


def test_an_async_task_runs_under_its_callers_trace(serving: tuple[Cluster, Client]) -> None:
    _, client = serving
    with tracing.traced(TRACEPARENT):
        seen = client.async_traceparent()
    assert seen is not None and seen.split("-")[1] == TRACEPARENT.split("-")[1] and seen != TRACEPARENT


def test_sync_and_async_tasks_sent_together_all_come_back(serving: tuple[Cluster, Client]) -> None:
    cluster, client = serving
    for _ in range(3):  # short tasks: the node learns to hand them over several at once
        calls: list[tuple[str, list[Any]]] = [("add", [1, 2]), ("nap", [0.05]), ("add", [3, 4]), ("async_fail", ["mixed"])]
        task_ids = _submit_together(cluster, *calls * 5)
        outcomes = [_outcome(client, task_id) for task_id in task_ids]
        assert outcomes[0::4] == [3] * 5 and outcomes[2::4] == [7] * 5
        assert all(isinstance(nap, dict) and "pid" in nap for nap in outcomes[1::4])
        assert outcomes[3::4] == ["ValueError: mixed"] * 5


def _outcome(client: Client, task_id: str) -> Any:
    try:
        return client.result(task_id, timeout=scaled(20))
    except TaskError as error:
        return f"{error.type}: {error.remote_message}"


def _submit_together(cluster: Cluster, *calls: tuple[str, list[Any]]) -> list[str]:
    """Submit tasks in one JSON-RPC batch, which the broker hands to the node in one message."""
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
        submitter.close()
    finally:
        context.term()
    return task_ids


# ---- the default concurrency, and a worker process that dies ------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_by_default_a_worker_runs_one_async_task_at_a_time(cluster: Cluster, pool: str) -> None:
    cluster.start_broker()
    cluster.start_node(*MODULES, workers=1, extra=["--pool", pool])
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        naps = [handle.result(scaled(30)) for handle in [client.nap(0.2) for _ in range(3)]]
    naps.sort(key=lambda nap: nap["started"])
    assert all(earlier["ended"] <= later["started"] for earlier, later in zip(naps, naps[1:], strict=False))


@pytest.mark.parametrize("pool", POOLS)
def test_an_async_task_blocking_its_loop_fails_a_second_after_its_limit(cluster: Cluster, pool: str) -> None:
    """Cancelling cannot reach a task that never awaits: the node's own limit answers the caller (and,
    for a worker process, kills it)."""
    cluster.start_broker()
    node = cluster.start_node(*MODULES, workers=1, extra=["--pool", pool])
    client = cluster.client()
    before = client.nap(0)["pid"]
    began = time.monotonic()
    with pytest.raises(TaskError) as raised:
        client.async_blocks(4.0)
    assert raised.value.type == "TimeLimitExceeded"
    assert 0.3 <= time.monotonic() - began < scaled(3.5)  # 0.3 s + ASYNC_LIMIT_MARGIN_S, not 4 s
    after = client.nap(0)["pid"]
    if pool == "process":
        assert after != before  # the worker was killed
    else:
        assert after == before == node.pid


def test_a_worker_process_that_dies_fails_the_async_tasks_it_ran(cluster: Cluster) -> None:
    """Any of the async tasks a worker runs at once may have killed it: all of them are blamed."""
    cluster.start_broker()
    cluster.start_node(*MODULES, workers=1, extra=["--concurrency", "4"])
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        naps = [client.nap(5.0) for _ in range(2)]
        wait_until(lambda: all(handle.status() == "RUNNING" for handle in naps), 20, "the naps to run")
        doomed = client.async_die(0.2)
        for handle in [*naps, doomed]:
            with pytest.raises(TaskError) as raised:
                handle.result(scaled(20))
            assert raised.value.type == "WorkerLost"
        assert client.nap(0).result(scaled(20))["pid"]  # a new worker serves


# ---- in-process: the registry and eager mode ----------------------------------------------------


def test_an_async_task_runs_in_eager_mode_too() -> None:
    from zerotask.eager import EagerClient
    from zerotask.task import Dispatcher, task

    dispatcher = Dispatcher()

    @task(dispatcher=dispatcher)
    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return 2 * value

    @task(dispatcher=dispatcher)
    async def refuse() -> None:
        raise KeyError("no")

    client = EagerClient(dispatcher)
    assert client.double(21) == 42
    with pytest.raises(TaskError) as raised:
        client.refuse()
    assert raised.value.type == "KeyError"


def test_a_cancelled_error_a_task_raises_itself_is_its_error() -> None:
    """Only the cancellation of the task running it (revoke, time limit) passes through run_async."""
    from zerotask.task import Dispatcher, task

    dispatcher = Dispatcher()

    @task(dispatcher=dispatcher)
    async def gives_up() -> None:
        raise asyncio.CancelledError()

    result, error = asyncio.run(dispatcher.run_async("gives_up", [], {}))
    assert result is None and error is not None and error["data"]["type"].endswith("CancelledError")


def test_pool_options_are_checked() -> None:
    from zerotask.node import Node
    from zerotask.task import task

    with pytest.raises(ValueError):
        task(pool="greenlet")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        Node(pool="greenlet")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Node(pool="thread", concurrency=0)
    with pytest.raises(ValueError):  # more running tasks than a broker accepts from a reconnecting node
        Node(pool="thread", workers=100, concurrency=101)
