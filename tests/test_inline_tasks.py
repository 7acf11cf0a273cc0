"""Short sync tasks run in a thread-pool node's own loop (zerotask/node/inline.py), on a real broker and
node: which tasks do, which never do, and that errors, revoke, drain and heartbeats behave as with threads.

A task's thread name says where it ran: "MainThread" is the node's loop, "zerotask-thread-N" a pool thread.
Runs are told short or slow by the wall clock (under 1 ms or not): the slow ones here sleep 2 ms or more,
and a short one is called until it runs in the loop (bounded), so a busy machine delays, never fails, them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zerotask import TaskError, TaskRevoked
from zerotask.client import AsyncClient, Client
from zerotask.node.inline import INLINE_AFTER, INLINE_MAX_S, MAX_NAMES, ShortTasks
from zerotask.testing import Cluster, ManagedProcess, scaled, wait_until

MODULES = ("tests.tasks", "tests.pool_tasks")
LOOP = "MainThread"
MAX_CALLS = 2000  # a short task that still runs in threads after this many calls is a failure


def thread_node(cluster: Cluster, workers: int = 1, *extra: str) -> ManagedProcess:
    return cluster.start_node(*MODULES, workers=workers, extra=["--pool", "thread", *extra])


def calls_until_in_loop(call: Callable[[], str]) -> list[str]:
    """Call until a run happens in the node's loop; every thread name seen, that last one included."""
    seen: list[str] = []
    while not seen or seen[-1] != LOOP:
        assert len(seen) < MAX_CALLS, f"never ran in the node's loop: {seen[-5:]}"
        seen.append(call())
    return seen


def promoted(client: Client) -> None:
    """Call thread_name until it runs in the node's loop."""
    seen = calls_until_in_loop(client.thread_name)
    assert len(seen) > INLINE_AFTER and all(name.startswith("zerotask-thread-") for name in seen[:INLINE_AFTER])


# ---- the rule alone --------------------------------------------------------------------------------


def test_a_task_counts_as_short_after_its_short_runs_and_twice_as_many_after_each_slow_one() -> None:
    shorts = ShortTasks()
    for _ in range(INLINE_AFTER - 1):
        shorts.ran("add", 0.0)
    assert not shorts.short("add")
    shorts.ran("add", 0.0)
    assert shorts.short("add") and not shorts.short("other")
    shorts.ran("add", INLINE_MAX_S)  # slow while it counted as short: back to the threads, and 2x the runs
    assert not shorts.short("add")
    for _ in range(2 * INLINE_AFTER - 1):
        shorts.ran("add", 0.0)
    assert not shorts.short("add")
    shorts.ran("add", 0.0)
    assert shorts.short("add")
    shorts.ran("slow", INLINE_MAX_S)  # slow before it ever counted as short: the count starts again only
    for _ in range(INLINE_AFTER):
        shorts.ran("slow", 0.0)
    assert shorts.short("slow")


def test_a_broker_that_names_endless_tasks_grows_the_record_no_further() -> None:
    shorts = ShortTasks()
    for number in range(MAX_NAMES + 100):
        shorts.ran(f"task-{number}", 0.0)
    assert len(shorts._streaks) == MAX_NAMES


# ---- on a real node --------------------------------------------------------------------------------


def test_a_short_task_runs_in_the_nodes_loop_once_seen_short_and_leaves_it_once_seen_slow(cluster: Cluster) -> None:
    cluster.start_broker()
    thread_node(cluster)
    client = cluster.client()
    promoted(client)
    assert client.thread_name(0.05) == LOOP  # it was short until now: it runs in the loop, and is slow
    after_slow = calls_until_in_loop(client.thread_name)
    assert len(after_slow) > 2 * INLINE_AFTER  # back to threads, for twice as many runs as the first time
    assert all(name.startswith("zerotask-thread-") for name in after_slow[: 2 * INLINE_AFTER])


def test_a_slow_task_or_one_with_a_time_limit_never_runs_in_the_loop(cluster: Cluster) -> None:
    cluster.start_broker()
    thread_node(cluster)
    client = cluster.client()
    assert all(client.thread_name(0.002) != LOOP for _ in range(INLINE_AFTER + 8))
    assert all(client.limited_thread_name() != LOOP for _ in range(INLINE_AFTER + 8))
    promoted(client)
    task_id = client.apply_async("thread_name", time_limit=30)  # a limit of its own, from the caller
    assert client.result(task_id, timeout=scaled(20)).startswith("zerotask-thread-")


def test_a_task_run_in_the_loop_reports_its_error_as_in_a_thread(cluster: Cluster) -> None:
    cluster.start_broker()
    thread_node(cluster)
    client = cluster.client()

    def failing() -> str:
        with pytest.raises(TaskError) as raised:
            client.thread_name(fail=True)
        assert raised.value.type == "ValueError"
        return raised.value.remote_message

    seen = calls_until_in_loop(failing)
    assert len(seen) > INLINE_AFTER and all(name.startswith("zerotask-thread-") for name in seen[:INLINE_AFTER])
    assert client.add(1, 2) == 3


def test_a_short_task_waits_for_a_free_thread_and_is_revoked_there(cluster: Cluster, tmp_path: Path) -> None:
    """No more tasks run at once than there are threads: a short task that comes while the only thread
    is busy waits in the node, where a revoke drops it."""
    cluster.start_broker()
    thread_node(cluster, 1, "--prefetch", "10")
    client = cluster.client()
    promoted(client)
    started = tmp_path / "started"
    running = client.submit("mark_then_sleep", str(started), 1.0)
    wait_until(started.exists, 20, "the long task to start")
    waiting = client.submit("thread_name")
    wait_until(lambda: cluster.info()["nodes"][0]["tasks"] == 2, 10, "the node to hold both")
    assert client.revoke(waiting) == "REVOKED"
    assert client.result(running, timeout=scaled(20)) == "slept"
    with pytest.raises(TaskRevoked):
        client.result(waiting, timeout=scaled(5))
    assert client.thread_name() == LOOP  # still short


def test_sigterm_hands_back_the_short_tasks_waiting_for_a_thread(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker()
    node = thread_node(cluster, 1, "--prefetch", "3")
    promoted(cluster.client())
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        started = tmp_path / "started"
        running = client.mark_then_sleep(str(started), 1.0)
        wait_until(started.exists, 20, "the long task to start")
        waiting = [client.thread_name() for _ in range(3)]
        wait_until(lambda: cluster.info()["nodes"][0]["tasks"] == 4, 10, "the node to hold all four")
        node.signal(signal.SIGTERM)
        assert running.result(scaled(10)) == "slept"
        assert node.process.wait(scaled(15)) == 0
        assert [handle.status() for handle in waiting] == ["QUEUED"] * 3  # handed back, not lost
        thread_node(cluster, 1)
        assert all(handle.result(scaled(20)).startswith("zerotask-thread-") for handle in waiting)


def test_the_heartbeats_go_on_through_tasks_in_the_loop_and_a_long_one_after_it_was_seen_slow(cluster: Cluster) -> None:
    """With heartbeats every 0.2 s (the node lost after 0.6 s of silence), a stream of short tasks in the
    loop, then one that blocks for 1.5 s once it has been seen slow (so in a thread): the node is never lost."""
    cluster.start_broker("--heartbeat", "0.2")
    node = thread_node(cluster)
    client = cluster.client()
    promoted(client)
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        # (each ran in the loop, or a run over 1 ms on a busy machine sent it to the threads: back it comes)
        calls_until_in_loop(client.thread_name)
    assert client.thread_name(0.05) == LOOP  # slow: the next calls go to the threads
    assert client.thread_name(1.5).startswith("zerotask-thread-")
    assert client.thread_name().startswith("zerotask-thread-")
    assert len(cluster.info()["nodes"]) == 1
    assert cluster.broker is not None and " lost " not in cluster.broker.output()
    assert "reconnecting" not in node.output()
