"""Hostile or careless peers cannot grow or stall the broker: every table a peer fills has a bound, and
what is beyond it gets a clear error. Tested as an attacker would, with raw ZeroMQ sockets against a real
broker, and (for the pieces that need no process) in-process."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.test_jsonrpc_spec import RawPeer
from zerotask import QueueFull
from zerotask.loop import EventLoop
from zerotask.store import MemoryStore, Outcome, SqliteStore, TaskRecord
from zerotask.testing import Cluster, scaled, wait_until
from zerotask.wire import FINISHED

Context = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def zmq_context() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def request(method: str, params: Any, request_id: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return message


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_batch_larger_than_the_limit_is_refused_whole(running: Cluster, zmq_context: Context) -> None:
    peer = RawPeer(zmq_context, running.endpoint, "dealer")
    batch = [request("zerotask.broker.submit", {"method": "add", "args": [1, 2]}, n) for n in range(1001)]
    answer = peer.call(batch)
    assert answer["error"]["code"] == -32600 and "1000" in answer["error"]["data"]
    assert running.info()["queued"] == {}
    assert len(peer.call(batch[:1000])) == 1000  # at the limit: served


def test_a_notify_naming_one_task_many_times_gets_one_answer(running: Cluster, zmq_context: Context) -> None:
    """One small notify used to make the broker push the same outcome once per repetition."""
    client = running.client()
    task_id = client.submit("echo", "x" * 2500)
    client.result(task_id, timeout=scaled(10))
    peer = RawPeer(zmq_context, running.endpoint, "dealer")
    peer.send(request("zerotask.broker.notify", {"task_ids": [task_id] * 1000}, 1))
    received: list[Any] = []
    while peer.socket.poll(int(scaled(1) * 1000)):
        message = json.loads(peer.socket.recv())
        received.extend(message if isinstance(message, list) else [message])
    pushes = [item for item in received if item.get("method") == "zerotask.client.finished"]
    responses = [item for item in received if "id" in item]
    assert len(pushes) == 1 and pushes[0]["params"]["task_id"] == task_id
    assert responses == [{"jsonrpc": "2.0", "result": {"unknown": []}, "id": 1}]


def test_a_peer_owed_too_many_answers_gets_queue_full(cluster: Cluster, zmq_context: Context) -> None:
    cluster.start_broker("--max-waiting", "3")
    cluster.start_node("tests.tasks", workers=1)
    peer = RawPeer(zmq_context, cluster.endpoint, "dealer")
    for n in range(3):
        peer.send(request("sleep", [0.3], n))
    refused = peer.call(request("sleep", [0.3], "fourth"))
    assert refused["id"] == "fourth" and refused["error"]["code"] == -32005
    assert refused["error"]["data"] == {"limit": 3, "bound": "waiting"}
    answered = [peer.receive(scaled(10)) for _ in range(3)]
    assert sorted(answer["id"] for answer in answered) == [0, 1, 2]
    assert peer.call(request("add", [1, 2], "again"))["result"] == 3  # owed nothing now: served again
    other = RawPeer(zmq_context, cluster.endpoint, "req")  # the bound is per peer
    assert other.call(request("add", [2, 2], 1))["result"] == 4


def test_a_full_queue_refuses_submits_with_queue_full(cluster: Cluster, zmq_context: Context) -> None:
    cluster.start_broker("--max-queued", "3")
    peer = RawPeer(zmq_context, cluster.endpoint, "req")
    for n in range(3):
        assert "result" in peer.call(request("zerotask.broker.submit", {"method": "add", "args": [n, n]}, n))
    refused = peer.call(request("zerotask.broker.submit", {"method": "add", "args": [9, 9]}, 9))
    assert refused["error"]["code"] == -32005 and refused["error"]["data"] == {"limit": 3, "bound": "queue"}
    with pytest.raises(QueueFull):
        cluster.client().add(1, 1)
    cluster.start_node("tests.tasks", workers=1)
    wait_until(lambda: not cluster.info()["queued"], 20, "the queue to drain")
    assert cluster.client().add(1, 1) == 2


def test_a_peer_that_never_reads_cannot_grow_the_broker(running: Cluster, zmq_context: Context) -> None:
    """Each request for a 100 kB result queues a reply for a peer that never reads them; without a bound
    20,000 of them would hold 2 GB in the broker."""
    client = running.client()
    task_id = client.submit("echo", "y" * 100_000)
    client.result(task_id, timeout=scaled(10))
    assert running.broker is not None
    before = rss_kib(running.broker.pid)
    deaf = zmq_context.socket(zmq.DEALER)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.setsockopt(zmq.RCVHWM, 1)
    deaf.setsockopt(zmq.RCVBUF, 4096)
    deaf.connect(running.endpoint)
    payload = json.dumps(request("zerotask.broker.result", {"task_id": task_id}, 1)).encode()
    for _ in range(20_000):
        deaf.send(payload)
    wait_until(lambda: client.info() and True, 10, "the broker to answer")
    assert client.add(2, 3) == 5  # still serving the others
    grown_mb = (rss_kib(running.broker.pid) - before) / 1024
    print(f"broker RSS grew {grown_mb:.0f} MB for 20,000 unread 100 kB replies")
    assert grown_mb < 400


def test_an_oversized_subscription_disconnects_only_its_sender(running: Cluster, zmq_context: Context) -> None:
    hostile = zmq_context.socket(zmq.XSUB)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.connect(running.publish)
    hostile.send(b"\x01" + b"t" * 100_000)
    watcher = zmq_context.socket(zmq.SUB)
    watcher.setsockopt(zmq.LINGER, 0)
    watcher.setsockopt(zmq.SUBSCRIBE, b"")
    watcher.connect(running.publish)

    def finished_event_seen() -> bool:
        running.client().add(1, 1)
        while watcher.poll(100):
            if b"zerotask.event.finished" in watcher.recv():
                return True
        return False

    wait_until(finished_event_seen, 10, "a finished event to reach a well-behaved subscriber")


def test_a_task_nested_too_deep_from_a_peer_posing_as_a_node_is_refused(running: Cluster, zmq_context: Context) -> None:
    """A peer that announced itself as a node used to skip the depth check; the task it queued could not
    be encoded for the real node, used up its credit, and (on SQLite) survived a restart."""
    poser = RawPeer(zmq_context, running.endpoint, "dealer")
    connected = poser.call(request("zerotask.broker.connect", {"node": "poser", "methods": [], "credit": 0}, "c"))
    assert "result" in connected
    deep: Any = 1
    for _ in range(250):
        deep = [deep]
    refused = poser.call(request("add", [deep, 1], "deep"))
    assert refused["error"]["code"] == -32700
    assert running.client().add(2, 2) == 4


def test_cancelled_timers_do_not_pile_up_in_the_loop() -> None:
    """Waits answered before their timeout cancel their timer: a busy broker cancels millions."""
    loop = EventLoop()
    timers = [loop.call_later(60.0, lambda: None) for _ in range(10_000)]
    for timer in timers:
        timer.cancel()
    assert len(loop._timers) <= 64  # noqa: SLF001 - the heap is what must not grow


def test_the_memory_store_forgets_old_outcomes_first_then_refuses() -> None:
    store = MemoryStore(max_tasks=4)
    for n in range(4):
        store.add(TaskRecord(f"t{n}", "add"))
    store.finish_many([Outcome("t0", FINISHED, result=0)])
    store.add(TaskRecord("t4", "add"))  # full: the oldest outcome goes to make room
    assert store.get("t0") is None and store.get("t4") is not None
    with pytest.raises(QueueFull):
        store.add(TaskRecord("t5", "add"))  # full of unfinished tasks
    assert store.add(TaskRecord("t1", "add")) is False  # a known id is still just a known id


def test_the_sqlite_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteStore(str(path))
    store.add(TaskRecord("t1", "add", [1, 2]))
    store.flush()
    for made in tmp_path.iterdir():
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o600, made.name
    store.close()


def test_a_peer_that_reads_slowly_gets_every_reply(running: Cluster, zmq_context: Context) -> None:
    """5,000 requests sent before reading any reply: more than ZeroMQ queues for one peer (SNDHWM); the
    broker keeps what does not fit (bounded) and sends it as room appears."""
    peer = zmq_context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVHWM, 10)
    peer.connect(running.endpoint)
    for n in range(5000):
        peer.send(json.dumps(request("zerotask.broker.ping", {}, n)).encode())
    seen = set()
    while len(seen) < 5000 and peer.poll(int(scaled(10) * 1000)):
        seen.add(json.loads(peer.recv())["id"])
    assert len(seen) == 5000


def test_many_waits_that_time_out_do_not_stall_the_broker(running: Cluster, zmq_context: Context) -> None:
    """12,000 result waits that time out used to cost quadratic time (a 9 s stall): each was removed from
    a list, and each cancelled timer stayed in the heap."""
    client = running.client()
    task_id = client.submit("sleep", 60)
    peer = zmq_context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(running.endpoint)
    for start in range(0, 12_000, 1000):
        batch = [request("zerotask.broker.result", {"task_id": task_id, "timeout_s": 0.3}, n) for n in range(start, start + 1000)]
        peer.send(json.dumps(batch).encode())
    timed_out = 0
    while timed_out < 12_000 and peer.poll(int(scaled(20) * 1000)):
        message = json.loads(peer.recv())
        for item in message if isinstance(message, list) else [message]:
            timed_out += item.get("error", {}).get("code") == -32002
    assert timed_out == 12_000
    assert client.add(1, 2) == 3
    assert len(running.info()["nodes"]) == 1  # its node was never judged silent
    client.revoke(task_id)
