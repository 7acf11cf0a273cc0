"""How a node hands tasks to its workers and hears back: no wake-up for nothing, nothing held up by
the pipes' size, no descriptor left behind (zerotask/node/worker.py, threads.py, base.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from zerotask.loop import EventLoop
from zerotask.node import frames
from zerotask.node.base import RUNNING_AFTER_S, BasePool
from zerotask.node.inbox import Inbox
from zerotask.node.threads import ThreadPool
from zerotask.task import Dispatcher
from zerotask.testing import Cluster, ManualClock, wait_until


def _voluntary_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]


def test_an_outcome_read_by_the_node_wakes_no_idle_worker() -> None:
    """The worker sleeps once a task, waiting for the next: reading its outcome from a socket pair woke
    it a second time, for nothing."""
    with Cluster() as cluster:
        cluster.start_broker()
        node = cluster.start_node("tests.tasks", workers=1)
        client = cluster.client()
        assert client.add(1, 2) == 3
        (worker,) = _children(node.pid)
        calls = 200
        before = _voluntary_switches(worker)
        for number in range(calls):
            assert client.add(number, 1) == number + 1
        per_call = (_voluntary_switches(worker) - before) / calls
        assert per_call < 1.5, f"the worker slept {per_call:.2f} times a task"


def test_hand_offs_and_outcomes_larger_than_a_pipe_holds_go_through() -> None:
    """A worker's pipes hold 256 KiB: a bigger task or outcome is written as the other end reads."""
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=2)
        client = cluster.client()
        big = "x" * (3 * 1024 * 1024)
        assert client.echo(big)["args"] == [big]
        echoed = [client.echo(str(number) * 300_000)["args"] for number in range(4)]
        assert echoed == [[str(number) * 300_000] for number in range(4)]


def test_a_pipe_carries_whole_messages_of_any_size_and_ends_with_eof() -> None:
    reader, writer = os.pipe()
    sizes = [0, 1, 7, 64 * 1024, 64 * 1024 + 1, 1024 * 1024]  # the last ones larger than the pipe holds
    messages = [bytes([number]) * size for number, size in enumerate(sizes)]
    sender = threading.Thread(target=lambda: [frames.write(writer, message) for message in messages])
    sender.start()
    assert [frames.read(reader) for _ in messages] == messages
    sender.join(5)
    os.write(writer, b"\0\0\0")  # a header cut short by the writer's end
    os.close(writer)
    with pytest.raises(EOFError):
        frames.read(reader)
    with pytest.raises(EOFError):
        frames.read(reader)
    os.close(reader)


class _Handing(BasePool):
    """A pool that hands each task to nobody at once, as a subclass notes its hand-offs."""

    def __init__(self, clock: ManualClock, reported: list[dict[str, Any]]) -> None:
        super().__init__(clock, Dispatcher(), 1, reported.append)  # type: ignore[arg-type]
        self.clock = clock
        self.handed: list[dict[str, Any]] = []

    def dispatch(self) -> None:
        while self.pending:
            task = self.pending.popleft()
            self.handed.append(task)
            self._note_handed([task], self.clock.now)

    def end(self, task: dict[str, Any]) -> None:
        self._deliver(task, {"task_id": task["task_id"], "result": 1}, 30)


def test_a_pool_stops_looking_for_running_tasks_once_none_is_left() -> None:
    """A pool looks RUNNING_AFTER_S after a hand-off for tasks to report RUNNING; once every task it
    handed over has ended, it cancels that look (the node no longer wakes once a task for nothing)."""
    clock, reported = ManualClock(), []
    pool = _Handing(clock, reported)
    pool.add([{"task_id": "a", "method": "m"}, {"task_id": "b", "method": "m"}])
    assert clock.pending == 1
    pool.end(pool.handed[0])
    assert clock.pending == 1  # b still runs
    clock.advance(RUNNING_AFTER_S)
    assert pool.due_running() == ["b"]
    pool.end(pool.handed[1])
    assert clock.pending == 0
    assert [outcome["task_id"] for outcome in reported] == ["a", "b"]
    pool.add([{"task_id": "c", "method": "m"}])
    assert clock.pending == 1
    clock.advance(RUNNING_AFTER_S)
    assert pool.due_running() == ["c"]


def test_a_thread_inbox_hands_over_in_order_and_a_closed_one_takes_nothing() -> None:
    inbox = Inbox()
    received: list[Any] = []

    def read() -> None:
        while (item := inbox.get()) is not None:
            received.append(item)

    reader = threading.Thread(target=read)
    reader.start()
    batches = [[{"task_id": str(number)}] for number in range(100)]
    for batch in batches:
        inbox.put(batch)
    inbox.put(None)
    reader.join(5)
    assert received == batches
    descriptors = len(os.listdir("/proc/self/fd"))
    inbox.close()
    inbox.put([{"task_id": "late"}])  # the thread has ended: nothing is written anywhere
    assert len(os.listdir("/proc/self/fd")) < descriptors


def test_a_thread_pool_leaves_no_descriptor_behind() -> None:
    descriptors = len(os.listdir("/proc/self/fd"))
    pool = ThreadPool(EventLoop(), Dispatcher(), 4, lambda outcome: None)
    pool.start()
    assert len(os.listdir("/proc/self/fd")) > descriptors
    pool.stop()
    wait_until(lambda: len(os.listdir("/proc/self/fd")) == descriptors, 5, "the threads to close their inboxes")
