"""Client defects pinned by tests: messages over the broker's size limit, submits lost with a broker that
died before its first pong, and task ids that gave the next ones away."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest
import zmq

from zerotask import TaskTimeout, ZerotaskError, jsonrpc
from zerotask.client import AsyncClient, Client, new_task_id
from zerotask.client.connection import RequestTooLarge
from zerotask.testing import Cluster, scaled, wait_until

SMALL_LIMIT = 1024 * 1024  # `zerotask broker --max-message-bytes`, to keep the tests light
# 1,000 submits of 20 kB overflow the default 16 MiB; against 1 MiB, 2 kB arguments do it twice over.
ARGUMENT = "x" * 2000


# ---- messages under the broker's size limit ------------------------------------------------------------


def test_many_large_submits_are_split_under_the_brokers_message_limit(cluster: Cluster) -> None:
    cluster.start_broker("--max-message-bytes", str(SMALL_LIMIT))
    cluster.start_node("tests.tasks", workers=2)
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        # Submitted at once, before the broker's first pong has told the client its limit...
        early = [client.echo(i, ARGUMENT) for i in range(2000)]
        assert [handle.result(scaled(30))["args"] for handle in early] == [[i, ARGUMENT] for i in range(2000)]
        # ...and once the client knows it.
        late = [client.echo(i, ARGUMENT) for i in range(2000)]
        assert [handle.result(scaled(30))["args"] for handle in late] == [[i, ARGUMENT] for i in range(2000)]
        assert client.outstanding == 0


def test_a_submit_too_large_for_any_message_fails_alone_and_at_once(cluster: Cluster) -> None:
    cluster.start_broker("--max-message-bytes", str(SMALL_LIMIT))
    cluster.start_node("tests.tasks", workers=2)
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        client.info()  # answered after the client's first ping: the client knows the limit
        before = [client.echo(i) for i in range(100)]
        oversized = client.echo("x" * SMALL_LIMIT)
        after = [client.echo(i) for i in range(100, 200)]
        started = time.monotonic()
        with pytest.raises(ZerotaskError) as raised:
            oversized.result(scaled(10))
        assert time.monotonic() - started < scaled(1)
        assert isinstance(raised.value, RequestTooLarge) and isinstance(raised.value, ValueError)
        size = raised.value.data["bytes"]
        assert size > SMALL_LIMIT and raised.value.data["max_message_bytes"] == SMALL_LIMIT
        assert str(size) in str(raised.value) and str(SMALL_LIMIT) in str(raised.value)
        assert [handle.result(scaled(30))["args"] for handle in before + after] == [[i] for i in range(200)]
        assert client.outstanding == 0


# ---- a broker that dies before its first pong ----------------------------------------------------------

STALL_MODULE = """
import time

from zerotask import task


@task(name="broker.stall")
def stall(seconds):
    time.sleep(seconds)  # in the broker's loop: nothing is answered meanwhile
"""


def _stall(cluster: Cluster, tmp_path: Path) -> zmq.Socket[bytes]:
    """Start a broker and stop its loop. Its ZeroMQ thread still completes connections and takes in
    messages, but nothing is answered: a broker that dies now dies holding unanswered requests. (A
    SIGSTOP alone cannot place the crash there: stopped before the client's connection completes, the
    client's ZeroMQ queue keeps the messages for the next broker; stopped after it, the first pong has
    likely come back already.)"""
    module = tmp_path / "stall.py"
    module.write_text(STALL_MODULE)
    cluster.start_broker(str(module))
    staller: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    staller.setsockopt(zmq.LINGER, 0)
    staller.connect(cluster.endpoint)
    staller.send(jsonrpc.dumps(jsonrpc.request("broker.stall", [60], 1)))

    def stalled() -> bool:
        with Client(cluster.endpoint, timeout=scaled(0.5)) as probe:
            try:
                probe.info()
            except TaskTimeout:
                return True
            return False

    wait_until(stalled, 10, "the broker to stall")
    return staller


def test_submits_sent_before_the_first_pong_survive_a_broker_crash(cluster: Cluster, tmp_path: Path) -> None:
    staller = _stall(cluster, tmp_path)
    assert cluster.broker is not None
    # liveness: never reconnect for silence here, so only the pongs can tell the client what was lost
    with AsyncClient(cluster.endpoint, timeout=scaled(20), liveness=1000) as client:
        handles = [client.add(i, i) for i in range(200)]
        time.sleep(scaled(0.5))  # the client's first ping and its submits reach the stalled broker
        old = cluster.broker
        old.kill()  # SIGKILL, holding them
        old.stop()
        staller.close()
        cluster.start_broker()  # a new instance on the same endpoint, on the memory store: it knows nothing
        cluster.start_node("tests.tasks", workers=2)
        assert [handle.result(scaled(20)) for handle in handles] == [2 * i for i in range(200)]


def test_a_healthy_broker_gets_each_submit_once(running: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zerotask.client.connection")
    with AsyncClient(running.endpoint, timeout=scaled(30)) as client:
        handles = [client.add(i, i) for i in range(5000)]
        assert sum(handle.result(scaled(30)) for handle in handles) == sum(2 * i for i in range(5000))
    assert [record.getMessage() for record in caplog.records if record.name == "zerotask.client.connection"] == []


# ---- task ids ------------------------------------------------------------------------------------------


def test_task_ids_are_unique_and_unpredictable() -> None:
    ids = [new_task_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    pairs = list(zip(ids[:1000], ids[1:1001], strict=True))
    # By chance alone: a common prefix of 8 or more in 1,000 pairs has odds of 1,000 / 16**8; the same
    # character in the same place, 2,000 ± 43 times in 32,000 places.
    assert max(len(os.path.commonprefix(pair)) for pair in pairs) < 8
    assert sum(a == b for first, second in pairs for a, b in zip(first, second, strict=False)) < 2400
    assert all(re.fullmatch("[0-9a-f]{32}", task_id) for task_id in ids)


def test_a_forked_child_draws_its_own_task_ids() -> None:
    new_task_id()  # the parent has drawn its key
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out, whatever happens
        try:
            os.write(write_end, " ".join(new_task_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [new_task_id() for _ in range(100)]  # the same counter values as the child's
    assert len(child) == 100 and all(re.fullmatch("[0-9a-f]{32}", task_id) for task_id in child)
    assert set(child).isdisjoint(parent)
    assert max(len(os.path.commonprefix(pair)) for pair in zip(child, parent, strict=True)) < 8
