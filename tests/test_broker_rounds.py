"""The broker's rounds (zerotask.broker.transport): a round reads up to a budget of requests, then flushes
the store and hands out tasks; while a client floods it, a round ends sooner once a node waits with room for
tasks that wait, so that the node is not left idle for the rest of the round. Real broker (in a thread,
on a memory store that counts the adds of each round), real sockets: a client sending batches of submits,
and a raw node."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zmq

from tests.test_fuzz import Context, connect_node, dealer, receive, rpc
from tests.test_fuzz import zmq_context as zmq_context
from zerotask import wire
from zerotask.broker import Broker
from zerotask.store import MemoryStore, TaskRecord
from zerotask.testing import free_port, scaled, wait_until

BATCHES, PER_BATCH = 20, 100  # 2,000 submits: two rounds' budget


class RoundsStore(MemoryStore):
    """A memory store that records how many tasks had been added at each flush (the end of a round), and
    stops the broker's thread at its ``pause_at``-th add until ``go`` is set."""

    def __init__(self, pause_at: int) -> None:
        super().__init__()
        self.adds = 0
        self.at_flush: list[int] = []
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.go = threading.Event()

    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        self.adds += 1
        if self.adds == self.pause_at:
            self.paused.set()
            self.go.wait(scaled(30))
        return super().add(record, size_hint)

    def flush(self) -> list[TaskRecord]:
        self.at_flush.append(self.adds)
        return super().flush()


@pytest.fixture
def paused_broker() -> Iterator[tuple[RoundsStore, str]]:
    store = RoundsStore(pause_at=PER_BATCH + PER_BATCH // 2)  # in the middle of the second batch
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(bind=endpoint, publish=f"tcp://127.0.0.1:{free_port()}", store=store)
    thread = threading.Thread(target=broker.start, daemon=True)
    thread.start()
    try:
        yield store, endpoint
    finally:
        store.go.set()
        broker.stop()
        thread.join(timeout=10)


def batch(first: int) -> bytes:
    items: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": first + i, "method": wire.SUBMIT, "params": {"method": "add", "args": [first + i, 1]}}
        for i in range(PER_BATCH)
    ]
    return orjson.dumps(items)


def test_a_round_ends_early_for_a_node_that_waits_while_a_client_floods(
    paused_broker: tuple[RoundsStore, str], zmq_context: Context
) -> None:
    store, endpoint = paused_broker
    node = connect_node(zmq_context, endpoint, b"n1", ["add"], credit=0)
    client = dealer(zmq_context, endpoint)
    for first in range(0, BATCHES * PER_BATCH, PER_BATCH):
        client.send(batch(first))
    # The broker stops in the middle of the second batch, the rest of the flood in its socket; the node,
    # having finished what it had, asks for more, its tasks all queued.
    assert store.paused.wait(scaled(10)), "the broker never reached the flood"
    node.send(rpc(wire.REQUEST, {"credit": 10}, notification=True))
    time.sleep(scaled(0.3))  # for ZeroMQ to bring the node's message to the broker's socket
    store.go.set()

    tasks: list[dict[str, Any]] = []
    for message in receive(node, 10):
        if message.get("method") == wire.NODE_RUN:
            tasks += message["params"]["tasks"]
    assert len(tasks) == 10, tasks
    wait_until(lambda: store.adds >= BATCHES * PER_BATCH, 30, "every submit to be stored")
    ended_at = next(adds for adds in store.at_flush if adds >= store.pause_at)
    # Without the early end, that round would have read its whole budget, 1,000 submits: the node
    # would have got its tasks only then.
    assert ended_at < 1000, store.at_flush
    assert ended_at <= 4 * PER_BATCH, store.at_flush  # two batches more at most: the node's turn comes in one
    client.close()
    node.close()


def test_a_round_reads_its_whole_budget_while_no_node_has_room(
    paused_broker: tuple[RoundsStore, str], zmq_context: Context
) -> None:
    """The same flood, the node asking for nothing: rounds share their flush among 1,000 submits."""
    store, endpoint = paused_broker
    node = connect_node(zmq_context, endpoint, b"n1", ["add"], credit=0)
    client = dealer(zmq_context, endpoint)
    for first in range(0, BATCHES * PER_BATCH, PER_BATCH):
        client.send(batch(first))
    assert store.paused.wait(scaled(10)), "the broker never reached the flood"
    time.sleep(scaled(0.3))  # the whole flood in the broker's socket
    store.go.set()
    wait_until(lambda: store.adds >= BATCHES * PER_BATCH, 30, "every submit to be stored")
    ended_at = next(adds for adds in store.at_flush if adds >= store.pause_at)
    assert ended_at == 1000, store.at_flush
    time.sleep(scaled(0.2))
    while node.poll(0, zmq.POLLIN):
        assert all(message.get("method") != wire.NODE_RUN for message in receive(node, 1)), "a node with no credit got tasks"
    client.close()
    node.close()
