"""How the Redis store lays tasks out, where the contract suite does not reach: a store written by the
version before this one (each task's params and outcome in hashes of their own, the held tasks in one
sorted set) keeps working, and the sets of held tasks, one per broker, stay right when one broker moves
a task that another holds."""

from __future__ import annotations

import time

import pytest

from tests.redis_helpers import REDIS_URL
from tests.redis_helpers import pair as pair
from zerotask.store import Outcome, TaskRecord
from zerotask.testing import scaled
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED, REVOKED

redis = pytest.importorskip("redis")
from zerotask.store.redis import RedisStore  # noqa: E402 - only once redis-py is known to be there

Pair = tuple[RedisStore, RedisStore]


def base(store: RedisStore) -> str:
    return f"{store.prefix}:{{{store.queue}}}:"


def downgrade(store: RedisStore) -> None:
    """Rewrite the store's keys as the version before this one wrote them: every row without its payload,
    its params in "params" and its outcome in "outcome"; the held tasks as lease|id in the sorted set
    "held" instead of in a set per broker."""
    keys = base(store)
    with redis.Redis.from_url(REDIS_URL) as direct:
        for task_id, row in direct.hgetall(keys + "task").items():
            state, lease, finished, rest = row.split(b"|", 3)
            assert rest[0] == 0x1F, "written by this version"
            _, params, outcome, tail = rest.split(b"\x1f", 3)
            direct.hset(keys + "task", task_id, b"|".join([state, lease, finished]) + tail)
            if params:
                direct.hset(keys + "params", task_id, params)
            if outcome:
                direct.hset(keys + "outcome", task_id, outcome)
        for key in list(direct.scan_iter(match=keys + "held:*")):
            broker = key[len(keys + "held:") :]
            for task_id in direct.smembers(key):
                direct.zadd(keys + "held", {broker + b"|" + task_id: 0})
            direct.delete(key)


def ids(records: list[TaskRecord]) -> list[str]:
    return [record.id for record in records]


def test_a_store_written_by_the_version_before_keeps_working(pair: Pair) -> None:
    a, b = pair
    a.attach("broker-a", 0.3)
    b.attach("broker-b", 60.0)
    for n in range(1, 7):
        assert a.add(TaskRecord(f"t{n}", "add", [n, 1]))
    assert a.flush() == []
    assert ids(a.take_many([(["add"], 3)])[0]) == ["t1", "t2", "t3"]
    error = {"code": 1, "message": "no"}
    assert a.finish_many([Outcome("t1", FINISHED, 3), Outcome("t2", FAILED, error=error)]) == [True, True]
    downgrade(a)
    keys = base(a)
    with redis.Redis.from_url(REDIS_URL) as direct:
        assert b"\x1f" not in b"".join(direct.hvals(keys + "task"))
        assert sorted(direct.hkeys(keys + "params")) == [b"t2", b"t3", b"t4", b"t5", b"t6"]
        assert direct.zrange(keys + "held", 0, -1) == [b"broker-a|t3"]

        done, failed, held = b.get_many(["t1", "t2", "t3"])
        assert done is not None and (done.state, done.result, done.args) == (FINISHED, 3, [])
        assert failed is not None and (failed.state, failed.error, failed.args) == (FAILED, error, [2, 1])
        assert held is not None and (held.state, held.args) == (ASSIGNED, [3, 1])
        assert sorted(ids(b.list_tasks())) == ["t1", "t2", "t3", "t4", "t5", "t6"]  # each once

        (taken,) = b.take_many([(["add"], 1)])
        assert [(record.id, record.args) for record in taken] == [("t4", [4, 1])]
        assert b.finish_many([Outcome("t4", FINISHED, 5)]) == [True]
        record = b.get("t4")
        assert record is not None and (record.state, record.result) == (FINISHED, 5)
        assert not direct.hexists(keys + "params", "t4")  # as that version dropped a finished task's params
        assert b.reset("t2")
        record = b.get("t2")
        assert record is not None and (record.state, record.error, record.args) == (QUEUED, None, [2, 1])

        deadline = time.monotonic() + scaled(5)
        while (reclaimed := b.reclaim()) == 0:  # A's lease runs out: its task held in "held" is queued again
            assert time.monotonic() < deadline, "the lease was never reclaimed"
            time.sleep(0.02)
        assert reclaimed == 1 and not direct.exists(keys + "held")
        (taken,) = b.take_many([(["add"], 10)])
        expected = [("t3", [3, 1]), ("t5", [5, 1]), ("t6", [6, 1]), ("t2", [2, 1])]  # t3 in its place, t2 reset: last
        assert [(record.id, record.args) for record in taken] == expected
        assert b.finish_many([Outcome(record.id, FINISHED, 0) for record in taken]) == [True] * 4

        assert b.expire(before=time.time() + 10) == 6
        assert not direct.exists(keys + "task", keys + "params", keys + "outcome")


def test_a_task_moved_by_another_broker_stays_in_the_first_brokers_set_without_harm(pair: Pair) -> None:
    """A script cannot name another broker's set: a task B claims or revokes stays in A's set, which
    listings and reclaims see through (it is not leased to A), and A's reclaim drops it."""
    a, b = pair
    a.attach("broker-a", 60.0)
    b.attach("broker-b", 60.0)
    for task_id in ("t1", "t2", "t3"):
        assert a.add(TaskRecord(task_id, "add"))
    assert a.flush() == []
    assert ids(a.take_many([(["add"], 2)])[0]) == ["t1", "t2"]
    assert ids(b.claim(["t1"])) == ["t1"]  # its node moved to B
    assert b.finish_many([Outcome("t2", REVOKED, error={"code": 2, "message": "revoked"})]) == [True]
    keys = base(a)
    with redis.Redis.from_url(REDIS_URL) as direct:
        assert direct.smembers(keys + "held:broker-a") == {b"t1", b"t2"}
        assert direct.smembers(keys + "held:broker-b") == {b"t1"}
        assert ids(a.list_tasks(state=ASSIGNED)) == ["t1"]  # once, leased to B
        assert a.reclaim() == 0
        assert direct.smembers(keys + "held:broker-a") == set()  # what A's own set held for nothing

        assert ids(a.take_many([(["add"], 1)])[0]) == ["t3"]
        assert ids(b.claim(["t3"])) == ["t3"]
        a.close()  # A is gone, its set holding t3, which is B's now
        assert b.reclaim() == 0
        assert [(record.state, record.id) for record in b.list_tasks(state=ASSIGNED)] == [(ASSIGNED, "t3"), (ASSIGNED, "t1")]
        assert direct.smembers(keys + "held:broker-b") == {b"t1", b"t3"}
        assert not direct.exists(keys + "held:broker-a")
