"""A broker on Redis sends a round's write ahead (zerotask.broker.ahead, the transport's round end): tasks
submitted while a write is under way go with a later one, and are acknowledged only once that one is
answered. Real broker (in a thread), real Redis; the store pauses Redis' writes (CLIENT PAUSE WRITE, from a
connection of its own) before the writes it sends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from tests.redis_helpers import REDIS_URL, forget, redis_store
from zerotask.broker import Broker
from zerotask.store import Outcome, Want
from zerotask.testing import free_port, scaled

pytest.importorskip("redis")
import redis  # noqa: E402 - only once redis-py is known to be there

from zerotask.store.redis import RedisStore  # noqa: E402

PAUSE_MS = 150


class PausingStore(RedisStore):
    """A RedisStore whose next ``pauses`` writes sent ahead find Redis' writes paused for PAUSE_MS."""

    def __init__(self, prefix: str) -> None:
        super().__init__(REDIS_URL, prefix=prefix)
        self.pauses = 0
        self._admin = redis.Redis.from_url(REDIS_URL)

    def take_later(self, wants: Sequence[Want], outcomes: Sequence[Outcome] = ()) -> Any:
        if self.pauses > 0:
            self.pauses -= 1
            self._admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        return super().take_later(wants, outcomes)

    def close(self) -> None:
        super().close()
        self._admin.close()


@pytest.fixture
def paused(tmp_path: Path) -> Iterator[tuple[PausingStore, RedisStore, str]]:
    """(the broker's store, a store on its prefix to look with, the broker's endpoint), the broker running."""
    looking = redis_store(tmp_path)
    assert isinstance(looking, RedisStore)
    store = PausingStore(looking.prefix)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(bind=endpoint, publish=f"tcp://127.0.0.1:{free_port()}", store=store)
    thread = threading.Thread(target=broker.start, daemon=True)
    thread.start()
    try:
        yield store, looking, endpoint
    finally:
        broker.stop()
        thread.join(timeout=10)
        looking.close()
        forget(looking)


def submit(socket: zmq.Socket[bytes], task_id: str) -> None:
    request = {"jsonrpc": "2.0", "id": task_id, "method": "zerotask.broker.submit", "params": {"method": "a", "task_id": task_id}}
    socket.send(orjson.dumps(request))


def stored(looking: RedisStore, task_id: str) -> bool:
    """Whether Redis has the task now (HEXISTS is a read: CLIENT PAUSE WRITE lets it through)."""
    (found,) = looking._run([("HEXISTS", looking._key("task"), task_id)])
    return bool(found)


def test_tasks_submitted_while_a_write_is_under_way_are_acknowledged_once_the_next_write_stored_them(
    paused: tuple[PausingStore, RedisStore, str],
) -> None:
    store, looking, endpoint = paused
    context = zmq.Context.instance()
    with context.socket(zmq.DEALER) as socket:
        socket.connect(endpoint)
        socket.setsockopt(zmq.RCVTIMEO, int(scaled(10.0) * 1000))
        submit(socket, "warm-up")  # (connected, and the broker's first round done)
        assert orjson.loads(socket.recv())["result"] == "warm-up"
        first, second = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
        store.pauses = 2  # the write carrying the first, then the one carrying the second
        submit(socket, first)
        time.sleep(PAUSE_MS / 3000)  # the first's write waits in Redis: the broker reads the second meanwhile
        submit(socket, second)
        acknowledged = []
        for _ in range(2):
            reply = orjson.loads(socket.recv())
            assert "result" in reply, reply
            assert stored(looking, reply["id"]), f"{reply['id']} was acknowledged before Redis had it"
            acknowledged.append(reply["id"])
        assert acknowledged == [first, second]
