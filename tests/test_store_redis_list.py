"""Listings of the Redis store where the contract suite does not reach: unfinished tasks are found where
they wait (each lane and priority of the queue, the scheduled tasks, the held ones), so a listing must
merge them newest first, page them and filter them; and a store written when "live" held every
unfinished task lists each once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_helpers import REDIS_URL, forget, redis_store
from zerotask.store import Outcome, TaskRecord
from zerotask.wire import ASSIGNED, FAILED, QUEUED, RETRY, SCHEDULED

redis = pytest.importorskip("redis")
from zerotask.store.redis import RedisStore  # noqa: E402 - only once redis-py is known to be there


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisStore]:
    """A Redis store of its own whose clock starts at 1,000 and moves one second per task added."""
    clock = iter(float(second) for second in range(1000, 100_000))
    monkeypatch.setattr(time, "time", lambda: next(clock))
    made = redis_store(tmp_path)
    assert isinstance(made, RedisStore)
    yield made
    made.close()
    forget(made)


def ids(records: list[TaskRecord]) -> list[str]:
    return [record.id for record in records]


def fill(store: RedisStore) -> None:
    """In order of creation: tasks of two methods, two named queues and three priorities, one scheduled
    for later, then some taken (one retried) and one failed."""
    store.attach("broker-a", 60.0)
    added = [
        TaskRecord("a0", "a"),
        TaskRecord("b0", "b", queue="io"),
        TaskRecord("a1", "a", priority=5),
        TaskRecord("s0", "a", due_at=1e9),
        TaskRecord("a2", "a"),
        TaskRecord("b1", "b", priority=9),
        TaskRecord("a3", "a", priority=5),
        TaskRecord("a4", "a"),
    ]
    for record in added:
        assert store.add(record)
    assert store.flush() == []
    (taken,) = store.take_many([(["a"], 2)])
    assert ids(taken) == ["a1", "a3"]  # the highest priority first
    store.retry("a3", 1)
    (taken,) = store.take_many([(["a"], 1)])
    assert ids(taken) == ["a0"]
    assert store.finish_many([Outcome("a0", FAILED, error={"code": 1, "message": "no"})]) == [True]


def test_a_listing_merges_every_place_unfinished_tasks_wait_newest_first(store: RedisStore) -> None:
    fill(store)
    assert ids(store.list_tasks()) == ["a0", "a4", "a3", "b1", "a2", "s0", "a1", "b0"]
    assert ids(store.list_tasks(limit=3)) == ["a0", "a4", "a3"]
    assert ids(store.list_tasks(state=QUEUED)) == ["a4", "b1", "a2", "b0"]
    assert ids(store.list_tasks(state=SCHEDULED)) == ["s0"]
    assert ids(store.list_tasks(state=ASSIGNED)) == ["a1"]
    assert ids(store.list_tasks(state=RETRY)) == ["a3"]
    assert ids(store.list_tasks(method="b")) == ["b1", "b0"]
    assert ids(store.list_tasks(state=QUEUED, method="a", limit=1)) == ["a4"]


def test_a_listing_pages_by_created_at_across_lanes(store: RedisStore) -> None:
    fill(store)
    pages, before = [], None
    while True:
        page = store.list_tasks(state=QUEUED, limit=1, before=before)
        if not page:
            break
        pages += ids(page)
        before = page[-1].created_at
    assert pages == ["a4", "b1", "a2", "b0"]
    assert all(record.args == [] for record in store.list_tasks(state=QUEUED))  # unfinished: with their arguments


def test_a_store_written_when_live_held_every_unfinished_task_lists_each_task_once(store: RedisStore) -> None:
    """A version before listed every unfinished task from "live": what it left there is skipped, and
    expire drains it."""
    fill(store)
    live = f"{store.prefix}:{{{store.queue}}}:live"
    with redis.Redis.from_url(REDIS_URL) as direct:
        direct.zadd(live, {"a4": 1007.0, "b1": 1005.0, "a0": 1000.0, "a1": 1002.0})  # as that version kept them
        assert ids(store.list_tasks()) == ["a0", "a4", "a3", "b1", "a2", "s0", "a1", "b0"]
        assert ids(store.list_tasks(state=QUEUED)) == ["a4", "b1", "a2", "b0"]
        assert store.expire(before=1e9) == 1  # a0, failed
        assert direct.zrange(live, 0, -1) == [b"a1", b"s0", b"b1", b"a4"]


def test_a_scheduled_task_leaves_the_listing_index_when_it_is_due(store: RedisStore) -> None:
    assert store.add(TaskRecord("s1", "a", due_at=2000.0)) and store.add(TaskRecord("s2", "a", due_at=1e9))
    assert store.flush() == []
    assert ids(store.list_tasks(state=SCHEDULED)) == ["s2", "s1"]
    assert store.due(now=3000.0) == 1
    with redis.Redis.from_url(REDIS_URL) as direct:
        assert direct.zrange(f"{store.prefix}:{{{store.queue}}}:live", 0, -1) == [b"s2"]
    assert ids(store.list_tasks()) == ["s2", "s1"]
