"""AsyncClient, asyncio, map and map-reduce against real brokers, nodes and workers."""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from zerotask import TaskError, TaskTimeout, UnknownMethod
from zerotask.client import AsyncClient
from zerotask.mapreduce import AsyncMapReduce
from zerotask.testing import Cluster, scaled, wait_until

WORDCOUNT = Path(__file__).resolve().parent.parent / "examples" / "wordcount"


@pytest.fixture
def async_client(running: Cluster) -> Any:
    with AsyncClient(running.endpoint, timeout=scaled(30)) as client:
        yield client


def test_handle_gives_id_result_and_wait(async_client: AsyncClient) -> None:
    handle = async_client.add(5, 6)
    assert isinstance(handle.id, str) and handle.id
    assert handle.result(timeout=scaled(10)) == 11
    assert handle.wait(timeout=scaled(10)) == 11
    assert handle.done()
    assert handle.status() == "FINISHED"
    assert async_client.namespaces.are.awesome.foo("x").result(scaled(10)) == "x"


def test_status_goes_queued_running_finished(cluster: Cluster) -> None:
    cluster.start_broker()
    with AsyncClient(cluster.endpoint, timeout=scaled(10)) as client:
        handle = client.sleep(1.0)
        assert handle.status() == "QUEUED"  # no node yet
        cluster.start_node("tests.tasks", workers=1)
        seen = [handle.status()]
        while seen[-1] != "FINISHED":
            state = handle.status()
            if state != seen[-1]:
                seen.append(state)
            time.sleep(0.01)
        assert "RUNNING" in seen
        order = ["QUEUED", "ASSIGNED", "RUNNING", "FINISHED"]
        assert [order.index(state) for state in seen] == sorted(order.index(state) for state in seen)
        assert handle.result(scaled(10)) == 1.0


def test_errors_reach_the_handle(async_client: AsyncClient) -> None:
    with pytest.raises(TaskError) as raised:
        async_client.fail("nope").result(scaled(10))
    assert raised.value.type == "ValueError"
    with pytest.raises(UnknownMethod):
        async_client.no_such_task(1).result(scaled(10))
    with pytest.raises(TaskTimeout):
        async_client.sleep(1).result(timeout=0.1)


def test_callback_added_after_completion_is_called_once(async_client: AsyncClient) -> None:
    handle = async_client.add(2, 3)
    assert handle.result(scaled(10)) == 5
    called: list[Any] = []
    handle.callback(called.append)
    assert called == [5]


def test_callback_added_before_completion_is_called_once(async_client: AsyncClient) -> None:
    called: list[Any] = []
    finished = threading.Event()
    async_client.sleep(0.3).callback(lambda value: (called.append(value), finished.set()))
    assert finished.wait(scaled(10))
    time.sleep(0.1)
    assert called == [0.3]


def test_error_callback_gets_the_exception(async_client: AsyncClient) -> None:
    errors: list[BaseException] = []
    results: list[Any] = []
    handle = async_client.fail("bad").callback(results.append, errors.append)
    with pytest.raises(TaskError):
        handle.result(scaled(10))
    wait_until(lambda: errors, 5, "the error callback")
    assert results == [] and isinstance(errors[0], TaskError)


def test_ten_thousand_outstanding_handles_on_one_socket(cluster: Cluster) -> None:
    cluster.start_broker()
    threads_before = threading.active_count()
    with AsyncClient(cluster.endpoint, timeout=scaled(60)) as client:
        handles = [client.add(i, i) for i in range(10_000)]
        wait_until(lambda: client.info()["queued"].get("add") == 10_000, 30, "10,000 queued tasks")
        assert client.outstanding == 10_000
        assert not any(handle.done() for handle in handles)
        assert threading.active_count() <= threads_before + 1  # one I/O thread, not one per task
        cluster.start_node("tests.tasks", workers=2)
        assert sum(handle.result(scaled(120)) for handle in handles) == sum(2 * i for i in range(10_000))
        assert client.outstanding == 0


def test_handles_are_awaitable_and_gather(running: Cluster) -> None:
    async def main() -> tuple[Any, list[Any]]:
        async with AsyncClient(running.endpoint, timeout=scaled(30)) as client:
            single = await client.add(2, 3)
            many = await asyncio.wait_for(asyncio.gather(*(client.add(i, i) for i in range(1000))), scaled(60))
            return single, many

    single, many = asyncio.run(main())
    assert single == 5
    assert many == [2 * i for i in range(1000)]


def test_await_does_not_block_the_event_loop(running: Cluster) -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        with AsyncClient(running.endpoint) as client:
            await client.sleep(0.5)
        ticking.cancel()
        return ticks

    assert asyncio.run(main()) >= 10


def test_map_streams_results_in_input_order(async_client: AsyncClient) -> None:
    consumed = 0

    def inputs() -> Any:
        nonlocal consumed
        for value in range(200):
            consumed += 1
            yield value

    mapped = async_client.map("add_one", inputs(), window=10)
    first = next(mapped)
    assert first == 1
    assert consumed <= 12  # streaming: the window, not the whole input, was submitted
    assert [first, *mapped] == list(range(1, 201))


def test_map_keeps_order_when_later_tasks_finish_first(async_client: AsyncClient) -> None:
    delays = [0.4, 0.3, 0.2, 0.1, 0.0]
    assert list(async_client.map("sleep", delays, window=5)) == delays


def test_map_reduce_word_count_over_two_nodes_equals_counter(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(str(WORDCOUNT / "wc.py"), workers=1)
    cluster.start_node(str(WORDCOUNT / "wc.py"), workers=1)
    text = (WORDCOUNT / "apache-2.0.txt").read_text()
    sys.path.insert(0, str(WORDCOUNT))
    try:
        import wc
    finally:
        sys.path.remove(str(WORDCOUNT))
    with AsyncMapReduce(cluster.endpoint) as job:
        called: list[dict[Any, Any]] = []
        running = job.call(map="wc.map", reduce="wc.reduce", inputs=text.splitlines())
        counts = running.wait(timeout=scaled(120))
        running.callback(called.append)
    assert counts == dict(collections.Counter(wc.count_words(text)))
    assert called == [counts]
    finished = [node["finished"] for node in cluster.info()["nodes"]]
    assert len(finished) == 2 and all(count > 0 for count in finished)  # both nodes did work


def test_map_reduce_is_awaitable(running: Cluster) -> None:
    async def main() -> dict[Any, Any]:
        with AsyncMapReduce(running.endpoint) as job:
            return await job.call(map="tests.pairs", reduce="sum_values", inputs=["a b", "b c"])

    assert asyncio.run(main()) == {"a": 1, "b": 2, "c": 1}


def test_map_command_prints_results_in_order_with_progress(running: Cluster) -> None:
    command = [sys.executable, "-m", "zerotask.cli", "map", "add_one", "1", "2", "3", "--broker", running.endpoint, "--progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(60))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "3", "4"]
    assert "3/3" in done.stderr
