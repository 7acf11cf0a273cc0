"""The pytest plugin (zerotask/pytest_plugin.py) used as a user would: real broker and node processes
through its fixtures, the eager client in this process, and a user's project run by pytest in a
subprocess, after which none of the processes it started may be left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import tests.tasks  # noqa: F401 - registers the test tasks, which zerotask_eager runs
from zerotask import InvalidParams, TaskError, UnknownMethod, UnknownTask
from zerotask.client import AsyncClient, Client
from zerotask.eager import EagerClient
from zerotask.pytest_plugin import NodeFactory
from zerotask.task import Dispatcher, task
from zerotask.testing import Cluster, scaled

pytest_plugins = ["pytester"]


# ---- real processes ------------------------------------------------------------------------------


def test_broker_fixture_runs_a_broker_on_free_ports(zerotask_broker: Cluster) -> None:
    assert zerotask_broker.endpoint.startswith("tcp://127.0.0.1:")
    assert zerotask_broker.publish.startswith("tcp://127.0.0.1:")
    assert zerotask_broker.broker is not None and zerotask_broker.broker.alive()
    assert zerotask_broker.store == "memory"
    assert zerotask_broker.info()["nodes"] == []


def test_node_fixture_serves_its_modules_to_the_client(zerotask_node: NodeFactory, zerotask_client: Client) -> None:
    node = zerotask_node("tests.tasks", workers=2)
    assert node.alive()
    assert zerotask_client.add(2, 3) == 5
    assert zerotask_client.namespaces.are.awesome.foo("bar") == "bar"
    task_id = zerotask_client.submit("add", 20, 22)
    assert zerotask_client.result(task_id, timeout=scaled(10)) == 42
    assert zerotask_client.status(task_id) == "FINISHED"
    with pytest.raises(TaskError) as raised:
        zerotask_client.fail("boom")
    assert raised.value.type == "ValueError"


def test_every_node_the_factory_starts_connects(zerotask_broker: Cluster, zerotask_node: NodeFactory) -> None:
    first = zerotask_node("tests.tasks")
    second = zerotask_node("tests.tasks", workers=2)
    assert first.pid != second.pid
    assert len(zerotask_broker.info()["nodes"]) == 2


@pytest.mark.zerotask(store="sqlite")
def test_marker_runs_the_broker_on_sqlite(zerotask_broker: Cluster, zerotask_node: NodeFactory, zerotask_client: Client) -> None:
    zerotask_node("tests.tasks")
    assert zerotask_client.add(1, 1) == 2
    assert zerotask_broker.store.endswith("zerotask.db")
    assert Path(zerotask_broker.store).exists()


@pytest.mark.zerotask(broker_args=["--heartbeat", "2.5"])
def test_marker_passes_arguments_to_the_broker(zerotask_broker: Cluster) -> None:
    assert zerotask_broker.info()["heartbeat_s"] == 2.5


def test_async_client_fixture_gets_results_pushed(zerotask_node: NodeFactory, zerotask_async_client: AsyncClient) -> None:
    zerotask_node("tests.tasks")
    handles = [zerotask_async_client.add(i, i) for i in range(20)]
    assert [handle.result(timeout=scaled(10)) for handle in handles] == [2 * i for i in range(20)]


# The same calls, through a real node and eagerly: what a test sees must not depend on which it uses.
PARITY_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("add", (2, 3), {}),
    ("add", (1.5,), {"b": 2}),
    ("echo", ((1, 2), None), {"key": (3,)}),
    ("fail", ("boom",), {}),
    ("not_json", (), {}),
    ("nested", (300,), {}),
    ("add", (1,), {}),
    ("add", (), {"a": 1, "c": 2}),
]


def _outcome(client: Client | EagerClient, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return ("result", client.call(method, *args, **kwargs))
    except TaskError as error:
        return ("TaskError", error.type)
    except InvalidParams:
        return ("InvalidParams",)


def test_eager_outcomes_match_a_real_node(
    zerotask_node: NodeFactory, zerotask_client: Client, zerotask_eager: EagerClient
) -> None:
    zerotask_node("tests.tasks")
    for method, args, kwargs in PARITY_CALLS:
        assert _outcome(zerotask_eager, method, args, kwargs) == _outcome(zerotask_client, method, args, kwargs), method
    for client in (zerotask_client, zerotask_eager):
        with pytest.raises(UnknownMethod):
            client.call("no_such_task")


# ---- the eager client ----------------------------------------------------------------------------


def test_eager_call_returns_the_result(zerotask_eager: EagerClient) -> None:
    assert zerotask_eager.add(2, 3) == 5
    assert zerotask_eager.call("add", 1.5, b=2) == 3.5
    assert zerotask_eager.subtract(minuend=5, subtrahend=6) == -1
    assert zerotask_eager.namespaces.are.awesome.foo() == "foo"


def test_eager_task_that_raises_gives_task_error_with_its_type(zerotask_eager: EagerClient) -> None:
    with pytest.raises(TaskError) as raised:
        zerotask_eager.fail("boom")
    assert raised.value.type == "ValueError"
    assert raised.value.remote_message == "boom"
    assert "raise ValueError(message)" in raised.value.traceback


def test_eager_unknown_name_raises_unknown_method(zerotask_eager: EagerClient) -> None:
    with pytest.raises(UnknownMethod, match="no_such_task"):
        zerotask_eager.no_such_task(1)
    with pytest.raises(UnknownMethod):
        zerotask_eager.submit("no_such_task")
    with pytest.raises(InvalidParams):
        zerotask_eager.add(1)


def test_eager_submit_status_result(zerotask_eager: EagerClient) -> None:
    done = zerotask_eager.submit("add", 2, 3)
    assert zerotask_eager.status(done) == "FINISHED"
    assert zerotask_eager.result(done, timeout=1) == 5
    assert zerotask_eager.revoke(done) == "FINISHED"  # it ended before it could be revoked
    failed = zerotask_eager.submit("fail", "no")
    assert failed != done
    assert zerotask_eager.status(failed) == "FAILED"
    with pytest.raises(TaskError) as raised:
        zerotask_eager.result(failed)
    assert raised.value.type == "ValueError"
    with pytest.raises(UnknownTask):
        zerotask_eager.status("0" * 32)


def test_eager_values_cross_json_as_over_the_wire(zerotask_eager: EagerClient) -> None:
    assert zerotask_eager.echo((1, 2), key=(3,)) == {"args": [[1, 2]], "kwargs": {"key": [3]}}
    with pytest.raises(TaskError) as raised:
        zerotask_eager.not_json()
    assert raised.value.type == "TypeError"
    with pytest.raises(TypeError):
        zerotask_eager.echo(object())  # a Client could not send it either


def test_eager_retries_run_at_once(zerotask_eager: EagerClient, tmp_path: Path) -> None:
    started = time.monotonic()
    assert zerotask_eager.flaky(str(tmp_path / "flaky"), 2) == 3  # two failures, then the third attempt
    assert time.monotonic() - started < 0.6  # less than its backoffs alone (0.2 s, then 0.4 s) would take
    with pytest.raises(TaskError) as raised:
        zerotask_eager.wrong_error(str(tmp_path / "wrong"))
    assert raised.value.type == "KeyError"
    assert (tmp_path / "wrong").read_text() == "x\n"  # not a ConnectionError: one attempt only


def test_eager_client_runs_the_dispatcher_it_is_given() -> None:
    dispatcher = Dispatcher()

    @task(name="double", dispatcher=dispatcher)
    def double(value: int) -> int:
        return 2 * value

    with EagerClient(dispatcher) as client:
        assert client.double(4) == 8
        assert client.info()["tasks"] == ["double"]
        with pytest.raises(UnknownMethod):
            client.add(1, 2)


def test_loading_the_plugin_imports_no_sockets() -> None:
    """pytest loads the plugin in every run of a project where zerotask is installed: it must stay cheap."""
    code = "import sys, zerotask.pytest_plugin; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60), check=True)
    loaded = set(done.stdout.split())
    assert not loaded & {"zmq", "zerotask.testing", "zerotask.client", "zerotask.eager", "zerotask.broker", "zerotask.node"}


# ---- a user's project, run by pytest in a subprocess ---------------------------------------------

USER_TASKS = """
import os

from zerotask import task


@task
def multiply(a, b):
    return a * b


@task
def whoami():
    return os.getpid()


@task
def explode(message):
    raise RuntimeError(message)
"""

USER_TESTS = """
import os

import pytest

import myapp.tasks
from zerotask import TaskError, UnknownMethod


def record(cluster, *more):
    pids = [cluster.broker.pid, *(node.pid for node in cluster.nodes), *more]
    for pid in pids:  # the premise of the check that follows the run: each carries the marker
        with open(f"/proc/{pid}/environ", "rb") as environ:
            assert MARKER.encode() in environ.read().split(b"\\0")
    with open(PIDS, "a") as out:
        out.write(" ".join(map(str, pids)) + "\\n")


def test_tasks_on_a_node(zerotask_broker, zerotask_node, zerotask_client):
    zerotask_node("myapp.tasks", workers=2)
    assert zerotask_client.multiply(6, 7) == 42
    with pytest.raises(TaskError) as raised:
        zerotask_client.explode("boom")
    assert raised.value.type == "RuntimeError"
    record(zerotask_broker, zerotask_client.whoami())


@pytest.mark.zerotask(store="sqlite")
def test_tasks_on_sqlite(zerotask_broker, zerotask_node, zerotask_client):
    zerotask_node("myapp.tasks")
    task_id = zerotask_client.submit("multiply", 3, 3)
    assert zerotask_client.result(task_id) == 9
    record(zerotask_broker)


def test_async_client(zerotask_broker, zerotask_node, zerotask_async_client):
    zerotask_node("myapp.tasks")
    assert zerotask_async_client.multiply(2, 5).result() == 10
    record(zerotask_broker)


@pytest.mark.xfail(strict=True, reason="a failing test must stop its processes too")
def test_failing_test_with_a_node(zerotask_broker, zerotask_node, zerotask_client):
    zerotask_node("myapp.tasks", workers=2)
    record(zerotask_broker, zerotask_client.whoami())
    assert zerotask_client.multiply(2, 2) == 5


def test_eager(zerotask_eager):
    assert zerotask_eager.multiply(3, 4) == 12
    with pytest.raises(TaskError):
        zerotask_eager.explode("boom")
    with pytest.raises(UnknownMethod):
        zerotask_eager.divide(1, 2)
"""


def _processes_with(marker: str) -> list[int]:
    """The processes whose environment holds ``marker``: those a run started, however deep, and no other."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _left_behind(marker: str, timeout_s: float = 10.0) -> list[int]:
    """The processes with ``marker`` still there after ``timeout_s`` (scaled); SIGKILLed, so that a
    failure of the plugin does not outlive this test."""
    deadline = time.monotonic() + scaled(timeout_s)
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
def test_user_project_passes_and_leaves_no_process(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = f"ZEROTASK_PLUGIN_TEST={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("=", 1))  # inherited by the run and every process it starts
    pids = pytester.path / "pids.txt"
    pytester.mkpydir("myapp")
    (pytester.path / "myapp" / "tasks.py").write_text(USER_TASKS)
    pytester.makepyfile(test_myapp=f"MARKER = {marker!r}\nPIDS = {str(pids)!r}\n{USER_TESTS}")
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=scaled(180))
    finally:
        left = _left_behind(marker)
    result.assert_outcomes(passed=4, xfailed=1)
    started = pids.read_text().split()
    assert len(started) == 3 + 2 + 2 + 3  # a broker and a node for each of four tests, and two workers
    assert not left, f"processes left running: {left}"


def test_unknown_store_in_the_marker_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.zerotask(store="postgres")
        def test_it(zerotask_broker):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=scaled(60))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.zerotask takes store=*"])
