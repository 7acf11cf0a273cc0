"""The Redis store on a Redis Cluster (``redis+cluster://``), a cluster of the session's own (3 masters): a
store's keys share one hash tag (its ``queue`` name), so each store lives on one master and stores of other
names on others; when a resharding moves a store's slot, the store follows it and nothing is lost. The whole
store contract also runs on the cluster (tests/test_store_contract.py, the ``redis-cluster`` stores)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.redis_helpers import redis_cluster as redis_cluster
from zerotask.client import AsyncClient
from zerotask.exceptions import StoreUnavailable
from zerotask.store import Outcome, TaskRecord, open_store
from zerotask.testing import Cluster, scaled
from zerotask.testing_redis import RedisCluster

redis = pytest.importorskip("redis")
from redis.crc import key_slot  # noqa: E402 - only once redis-py is known to be there

from zerotask.store.redis import RedisStore  # noqa: E402

T = TypeVar("T")


@pytest.fixture
def stores(redis_cluster: RedisCluster) -> Iterator[Callable[[str], RedisStore]]:
    made: list[RedisStore] = []
    prefix = f"zt-test-{uuid.uuid4().hex}"

    def make(queue: str) -> RedisStore:
        made.append(RedisStore(redis_cluster.url, prefix=prefix, queue=queue))
        return made[-1]

    yield make
    for store in made:
        store.close()


def slot_of(store: RedisStore) -> int:
    return int(key_slot(f"{store.prefix}:{{{store.queue}}}:x".encode()))


def once_available(call: Callable[[], T]) -> T:
    """``call()``, given one StoreUnavailable at most: a MOVED reply (the commands did not run) is one."""
    try:
        return call()
    except StoreUnavailable:
        return call()


def test_stores_of_other_queues_live_on_other_masters(redis_cluster: RedisCluster, stores: Callable[[str], RedisStore]) -> None:
    names = [f"q{n}" for n in range(30)]
    masters = {redis_cluster.master_of(key_slot(f"x:{{{name}}}:y".encode())).port for name in names}
    assert len(masters) == 3, "30 names all hashed to one or two masters: pick others"
    for name in names[:6]:
        store = stores(name)
        store.add(TaskRecord(f"{name}-1", "add", [1, 2], {}))
        store.flush()
        assert [record.id for record in store.take_many([(["add"], 5)])[0]] == [f"{name}-1"]
        master = redis_cluster.master_of(slot_of(store))
        client = redis.Redis(port=master.port)
        assert any(client.scan_iter(match=f"{store.prefix}:{{{name}}}:*")), f"{name}'s keys are not on the master of its slot"


def test_a_store_follows_its_slot_to_another_master_and_loses_nothing(
    redis_cluster: RedisCluster, stores: Callable[[str], RedisStore]
) -> None:
    queue = uuid.uuid4().hex[:8]
    first, second = stores(queue), stores(queue)  # two brokers on one store
    first.attach("a", 30.0)
    second.attach("b", 30.0)
    for n in range(20):
        first.add(TaskRecord(f"t{n}", "add", [n, 1], {}))
    first.flush()
    taken = first.take_many([(["add"], 5)])[0]
    assert [record.id for record in taken] == [f"t{n}" for n in range(5)]
    slot = slot_of(first)
    before = redis_cluster.master_of(slot)
    redis_cluster.move_slot(slot, next(server for server in redis_cluster.servers if server is not before))
    assert redis_cluster.master_of(slot) is not before

    # The next call gets MOVED (nothing ran), the one after goes to the new master and finds everything there.
    recorded = once_available(
        lambda: first.finish_many([Outcome(record.id, "FINISHED", result=0, held=True) for record in taken])
    )
    assert recorded == [True] * 5
    rest = once_available(lambda: second.take_many([(["add"], 100)])[0])
    assert [record.id for record in rest] == [f"t{n}" for n in range(5, 20)]
    finished = first.get("t0")
    assert finished is not None and finished.state == "FINISHED"
    # The other broker's notifications followed the slot too: it heard of the outcomes, or knows it may have missed them.
    second.finish_many([Outcome(record.id, "FINISHED", result=1, held=True) for record in rest])
    changes = once_available(first.changes)
    assert changes.lost_track or set(changes.finished) == {record.id for record in rest}
    assert {record.id for record in rest} <= set(once_available(first.changes).finished) | set(
        changes.finished
    ) or changes.lost_track


def test_a_broker_on_a_redis_cluster_runs_tasks_through_a_resharding(redis_cluster: RedisCluster, tmp_path: Path) -> None:
    queue = uuid.uuid4().hex[:8]  # the store's name: its keys' hash tag, given in --store
    spec = f"{redis_cluster.url}?store={queue}"
    with Cluster(store=spec, directory=tmp_path) as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks")
        handles = [client.add(n, 1) for n in range(200)]
        assert [handle.result(timeout=scaled(30)) for handle in handles] == [n + 1 for n in range(200)]
        slot = int(key_slot(f"zt:{{{queue}}}:x".encode()))
        before = redis_cluster.master_of(slot)
        redis_cluster.move_slot(slot, next(server for server in redis_cluster.servers if server is not before))
        handles = [client.add(n, 2) for n in range(200)]
        assert [handle.result(timeout=scaled(30)) for handle in handles] == [n + 2 for n in range(200)]
    keys = redis.Redis(port=redis_cluster.master_of(slot).port).keys(f"zt:{{{queue}}}:*")
    assert keys, "the broker's keys are not under the name --store gave, on its slot's master"


def test_a_store_spec_names_the_store_and_passes_the_rest_to_redis(redis_cluster: RedisCluster) -> None:
    store = open_store("redis://127.0.0.1:6379/0?store=mail&socket_keepalive=true")
    try:
        assert isinstance(store, RedisStore) and store.queue == "mail"
    finally:
        store.close()
    default = open_store(redis_cluster.url)
    try:
        assert isinstance(default, RedisStore) and default.queue == "default"
    finally:
        default.close()
