"""What brokers sharing a Redis store agree on: each of these is one atomic script, so two stores (two
brokers) calling at once never both get what only one may have. Also the leases that keep one broker's
requeue off another's tasks, and a single broker taking a task in the round it was added.

Two RedisStore objects on one prefix stand for two brokers; the calls at once run in two threads, each
store on its own connection."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.redis_helpers import pair as pair
from zerotask.broker.core import BrokerCore
from zerotask.store import Outcome, TaskRecord
from zerotask.store.base import TokenBuckets
from zerotask.testing import ManualClock, scaled
from zerotask.wire import ASSIGNED, FINISHED, QUEUED, RETRY, SCHEDULED

pytest.importorskip("redis")
from zerotask.store.redis import RedisStore  # noqa: E402 - only once redis-py is known to be there

Pair = tuple[RedisStore, RedisStore]


def at_once(a: RedisStore, b: RedisStore, work: Callable[[RedisStore], list[Any]]) -> tuple[list[Any], list[Any]]:
    """Run ``work(a)`` and ``work(b)`` in two threads that start together; returns what each returned."""
    results: dict[int, list[Any]] = {}
    start = threading.Barrier(2)

    def run(index: int, store: RedisStore) -> None:
        start.wait(scaled(10))
        results[index] = work(store)

    threads = [threading.Thread(target=run, args=(index, store)) for index, store in enumerate((a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(60))
    assert set(results) == {0, 1}, "a thread failed or hung"
    return results[0], results[1]


def state(store: RedisStore, task_id: str) -> tuple[str, str]:
    """The task's state, and the broker its row says it is leased to ("" for none)."""
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    row = store._run([("HGET", store._key("task"), task_id)])[0].decode()
    return record.state, row.split("|")[1]


class TestScheduledAcrossBrokers:
    def test_due_by_two_brokers_at_once_queues_each_task_once_in_the_order_submitted(self, pair: Pair) -> None:
        a, b = pair
        later = time.time() + 3600
        for n in range(2000):
            assert a.add(TaskRecord(f"t{n}", "a", due_at=later + n % 7))
        assert a.flush() == []
        assert b.next_due() == later  # scheduled by another broker, seen here
        assert dict(b.state_counts()) == {SCHEDULED: 2000}

        def drain(store: RedisStore) -> list[int]:
            counts = []
            while count := store.due(later + 10, limit=37):
                counts.append(count)
            return counts

        by_a, by_b = at_once(a, b, drain)
        assert sum(by_a) + sum(by_b) == 2000
        assert dict(a.state_counts()) == {QUEUED: 2000}
        assert a.next_due() is None
        (taken,) = a.take_many([(["a"], 5000)])
        assert [record.id for record in taken] == [f"t{n}" for n in range(2000)]  # each in its place

    def test_due_at_one_broker_tells_the_other_that_tasks_are_queued(self, pair: Pair) -> None:
        a, b = pair
        a.attach("broker-a", 10.0)
        b.attach("broker-b", 10.0)
        assert a.add(TaskRecord("s", "a", due_at=time.time() + 3600, queue="io", priority=4))
        assert a.flush() == []
        assert b.changes().queued is False  # a SCHEDULED task is not worth a take
        assert a.due(time.time() + 7200) == 1
        deadline = time.monotonic() + scaled(5)
        while not b.changes().queued:
            assert time.monotonic() < deadline, "no notification"
            time.sleep(0.01)
        assert dict(b.queued_counts()) == {"a": 1}
        (taken,) = b.take_many([(["a"], 5, ["io"])])
        assert [(record.id, record.queue, record.priority) for record in taken] == [("s", "io", 4)]


class TestRegistryAcrossBrokers:
    def test_claim_slot_by_two_brokers_at_once_gives_each_slot_once(self, pair: Pair) -> None:
        a, b = pair
        claims = [(f"job{n % 20}", 60.0 * (n // 20)) for n in range(600)]

        def claim(store: RedisStore) -> list[tuple[str, float]]:
            # Each broker goes through the slots in time, the names in an order of its own.
            rng = random.Random(id(store))
            mine = [claims[k : k + 20] for k in range(0, len(claims), 20)]
            return [(name, slot) for names in mine for name, slot in rng.sample(names, 20) if store.claim_slot(name, slot)]

        by_a, by_b = at_once(a, b, claim)
        assert sorted(by_a + by_b) == sorted(claims)  # every run once, by one broker or the other

    def test_lock_unique_by_two_brokers_at_once_gives_each_lock_one_holder(self, pair: Pair) -> None:
        a, b = pair
        keys = [f"key{n}" for n in range(300)]
        for key in keys:
            assert a.add(TaskRecord(f"a-{key}", "a")) and a.add(TaskRecord(f"b-{key}", "a"))
        assert a.flush() == []
        until = time.time() + 3600

        def lock(store: RedisStore) -> list[str | None]:
            mine, order = ("a", keys) if store is a else ("b", keys[::-1])  # they meet in the middle
            holders = {key: store.lock_unique(key, f"{mine}-{key}", until) for key in order}
            return [holders[key] for key in keys]

        by_a, by_b = at_once(a, b, lock)
        for key, holder_a, holder_b in zip(keys, by_a, by_b, strict=True):
            assert (holder_a, holder_b) in ((None, f"a-{key}"), (f"b-{key}", None))  # one holder, the other told
        # The lock goes with its task: once it has an outcome, the other broker's task may take it.
        winner = "a-key0" if by_a[0] is None else "b-key0"
        assert b.finish_many([Outcome(winner, FINISHED, 1)]) == [True]
        loser = "b-key0" if winner == "a-key0" else "a-key0"
        assert a.lock_unique("key0", loser, until) is None
        assert b.lock_unique("key0", winner, until) == loser

    def test_locks_are_bounded_and_expired_ones_are_dropped(self, pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
        a, _ = pair
        from zerotask.store import redis_registry

        monkeypatch.setattr(redis_registry, "MAX_UNIQUE_LOCKS", 5)
        now = time.time()
        for n in range(8):
            assert a.lock_unique(f"old{n}", f"t{n}", now - 1) is None  # expired at once
        for n in range(10):
            assert a.lock_unique(f"key{n}", f"t{n}", now + 100 + n) is None
        kept = a._run([("ZRANGE", a._base + "locks:until", 0, -1)])[0]
        assert [key.decode() for key in kept] == [f"key{n}" for n in range(5, 10)]  # the soonest to expire went
        assert a._run([("HLEN", a._base + "locks")])[0] == 5

    def test_token_buckets_are_shared_and_never_hold_more_than_the_burst(self, pair: Pair) -> None:
        a, b = pair
        per_s = 0.001  # a slow refill: the test's seconds add no whole token

        def drain(store: RedisStore) -> list[int]:
            taken = []
            while got := store.take_tokens("limited", per_s, 500.0, 1):
                taken.append(got)
            return taken

        by_a, by_b = at_once(a, b, drain)
        assert sum(by_a) + sum(by_b) == 500
        assert b.take_tokens("limited", per_s, 500.0, -20) == -20  # given back
        assert a.take_tokens("limited", per_s, 500.0, 50) == 20
        assert a.take_tokens("limited", per_s, 500.0, -10_000) == -10_000
        assert b.take_tokens("limited", per_s, 500.0, 10_000) == 500  # never above the burst
        assert a.take_tokens("other", per_s, 3.0, 10) == 3  # each name its own

    def test_token_buckets_answer_as_the_in_memory_ones(self, pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
        a, b = pair
        clock = [1_700_000_000.0]
        monkeypatch.setattr(time, "time", lambda: clock[0])
        reference = TokenBuckets()
        rng = random.Random(11)
        for _ in range(400):
            clock[0] += rng.choice([0.0, 0.001, 0.1, 0.37, 1.0, 5.0])
            name, per_s = rng.choice([("x", 3.0), ("y", 0.5), ("z", 100.0)])
            burst, count = max(1.0, per_s), rng.randint(-3, 8)
            store = rng.choice([a, b])
            assert store.take_tokens(name, per_s, burst, count) == reference.take(name, per_s, burst, count)


class TestLeases:
    def test_requeue_leaves_alone_a_task_another_broker_claimed(self, pair: Pair) -> None:
        """A node moved from broker A to B: B claimed what it runs. A losing the node later must not take
        the tasks back from B, nor a RETRY task B took over."""
        a, b = pair
        a.attach("broker-a", 60.0)
        b.attach("broker-b", 60.0)
        for task_id in ("t1", "t2", "t3"):
            assert a.add(TaskRecord(task_id, "a"))
        (taken,) = a.take_many([(["a"], 3)])
        assert [record.id for record in taken] == ["t1", "t2", "t3"]
        a.retry("t2", 1)
        assert sorted(record.id for record in b.claim(["t1", "t2"])) == ["t1", "t2"]
        a.requeue(["t1", "t2", "t3"])  # A lost the node
        assert [state(a, task_id) for task_id in ("t1", "t2", "t3")] == [
            (ASSIGNED, "broker-b"),
            (ASSIGNED, "broker-b"),
            (QUEUED, ""),  # A's own
        ]
        assert dict(a.queued_counts()) == {"a": 1}
        b.retry("t2", 2)
        a.requeue(["t2"])  # a late retry timer of A's
        assert state(a, "t2") == (RETRY, "broker-b")
        b.requeue(["t1", "t2"])
        assert state(a, "t1") == (QUEUED, "") and state(a, "t2") == (QUEUED, "")

    def test_an_outcome_is_recorded_whichever_broker_holds_the_task(self, pair: Pair) -> None:
        a, b = pair
        a.attach("broker-a", 60.0)
        b.attach("broker-b", 60.0)
        assert a.add(TaskRecord("t1", "a"))
        assert [record.id for record in a.take_many([(["a"], 1)])[0]] == ["t1"]
        assert b.finish_many([Outcome("t1", FINISHED, 1)]) == [True]  # the first outcome wins, from anywhere
        assert a.finish_many([Outcome("t1", FINISHED, 2, held=True)]) == [False]
        record = a.get("t1")
        assert record is not None and (record.state, record.result) == (FINISHED, 1)


class TestOneBroker:
    def test_a_task_added_in_a_round_is_taken_in_that_round_with_one_round_trip(self, pair: Pair) -> None:
        a, _ = pair
        core = BrokerCore(a, ManualClock())
        node = core.connect(b"n1", ["a"], 10, ())
        sends: list[int] = []
        send = a._route.send

        def counted(commands: list[Any]) -> Any:
            sends.append(len(commands))
            return send(commands)

        a._route.send = counted  # type: ignore[method-assign]
        record = core.submit("a", [1], {})
        assert sends == []  # buffered
        assert dict(a.queued_counts()) == {"a": 1}
        assert core.assign() == [] and core.taking  # sent ahead: the broker goes on while Redis works
        assert not core.commit()  # the acknowledgement of the add waits for the take's answer, which carries it
        handed = core.take_answered()
        assert [(slot, [task.id for task in tasks]) for slot, tasks in handed] == [(node, [record.id])]
        assert len(sends) == 1  # the add (and the names the node announced) and the take, in one write
        assert not core.taking and core.commit()

    def test_tasks_taken_for_a_node_lost_while_the_take_was_under_way_are_queued_again(self, pair: Pair) -> None:
        a, _ = pair
        core = BrokerCore(a, ManualClock())
        core.connect(b"n1", ["a"], 10, ())
        record = core.submit("a", [1], {})
        assert core.assign() == [] and core.taking
        core.lose(b"n1", "gone")  # before Redis answered
        assert core.take_answered() == []
        assert state(a, record.id)[0] == QUEUED
        node = core.connect(b"n2", ["a"], 10, ())
        handed = core.assign() or core.take_answered()
        assert [(slot, [task.id for task in tasks]) for slot, tasks in handed] == [(node, [record.id])]

    def test_an_outcome_sent_ahead_is_what_a_revoke_in_the_same_round_finds(self, pair: Pair) -> None:
        a, _ = pair
        core = BrokerCore(a, ManualClock())
        node = core.connect(b"n1", ["a"], 10, ())
        record = core.submit("a", [1], {})
        core.assign() or core.take_answered()
        outcomes: list[Any] = []
        core.wait(record, outcomes.append)
        core.report(node, [{"task_id": record.id, "result": 2}])  # it waits for the round's write
        assert outcomes == [] and core.holder(record.id) == b"n1"
        assert core.revoke(record.id) == (FINISHED, None)  # it ended before the revoke: the node ran it
        assert [(done.state, done.result) for done in outcomes] == [(FINISHED, 2)]
        assert state(a, record.id)[0] == FINISHED

    def test_a_take_sent_ahead_is_answered_alike_when_its_connection_is_lost_before_the_answer(self, pair: Pair) -> None:
        a, b = pair
        a.attach("broker-a", 60.0)
        (connection_id,) = a._run([("CLIENT", "ID")])
        assert a.add(TaskRecord("t1", "a"))
        answer = a.take_later([(["a"], 5)])  # the add goes with it
        time.sleep(scaled(0.1))  # Redis ran both; the answer waits in a socket that is about to close
        b._run([("CLIENT", "KILL", "ID", connection_id)])
        assert [[record.id for record in records] for records in answer()[1]] == [["t1"]]  # sent again: the same answer
        assert a.flush() == []  # the add was not refused as a second one
        assert state(a, "t1") == (ASSIGNED, "broker-a")
        assert dict(a.state_counts()) == {ASSIGNED: 1}

    def test_a_buffered_scheduled_task_is_not_counted_as_queued(self, pair: Pair) -> None:
        a, _ = pair
        assert a.add(TaskRecord("later", "a", due_at=time.time() + 3600))
        assert a.add(TaskRecord("now", "a"))
        assert dict(a.queued_counts()) == {"a": 1}
        assert a.flush() == [] and dict(a.queued_counts()) == {"a": 1}

    def test_a_priority_outside_0_to_9_is_refused(self, pair: Pair) -> None:
        a, _ = pair
        for priority in (-1, 10):
            with pytest.raises(ValueError):
                a.add(TaskRecord("t", "a", priority=priority))
        assert a.flush() == []
