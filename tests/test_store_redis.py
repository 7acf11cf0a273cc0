"""What only the Redis store has: several brokers on one store (leases, notifications), and Redis itself
failing (killed, stopped, restarted). The contract every store keeps is in test_store_contract.py.

Two RedisStore objects on one prefix stand for two brokers. The tests that kill Redis start a
redis-server of their own; the others use the shared one (tests/redis_helpers.py)."""

from __future__ import annotations

import select
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_helpers import REDIS_URL, RedisServer
from tests.redis_helpers import pair as pair
from zerotask.store import Changes, Outcome, StoreUnavailable, TaskRecord
from zerotask.testing import scaled
from zerotask.wire import ASSIGNED, FINISHED, QUEUED, RETRY

redis = pytest.importorskip("redis")
from zerotask.store import redis as redis_store  # noqa: E402 - only once redis-py is known to be there
from zerotask.store.redis import RedisStore  # noqa: E402
from zerotask.store.redis_flow import TAKE_FIELDS, taken_tasks  # noqa: E402
from zerotask.store.redis_layout import lane, names  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (append-only file, no snapshots), killed afterwards."""
    made = RedisServer(tmp_path)
    made.start()
    yield made
    made.kill()


def queue(store: RedisStore, *task_ids: str, method: str = "a") -> None:
    for task_id in task_ids:
        assert store.add(TaskRecord(task_id, method, [task_id]))
    assert store.flush() == []


def take(store: RedisStore, limit: int = 100, methods: tuple[str, ...] = ("a",)) -> list[str]:
    (taken,) = store.take_many([(methods, limit)])
    return [record.id for record in taken]


def _add_args(task_id: str, created: str) -> list[Any]:
    """What the add script gets for a task of method "a" with args [7], priority 0, in the default queue."""
    return [task_id, b"\x1f[[7],{},{}]\x1f\x1f|", f"|0|{created}|0||{names('a', 'default')}", lane("a", "default") + "9"]


def state(store: RedisStore, task_id: str) -> str:
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    return record.state


def wait_for_changes(store: RedisStore, until: Callable[[Changes], bool], timeout_s: float = 5.0) -> Changes:
    """Wait on store.fileno() (bounded) and gather changes() until ``until`` holds for what was gathered."""
    gathered = Changes()
    deadline = time.monotonic() + scaled(timeout_s)
    while not until(gathered):
        left = deadline - time.monotonic()
        assert left > 0, f"no such changes in time: {gathered}"
        fileno = store.fileno()
        if fileno is not None:
            select.select([fileno], [], [], min(left, 0.1))
        try:
            found = store.changes()
        except StoreUnavailable:
            time.sleep(0.05)
            continue
        gathered.finished += found.finished
        gathered.queued |= found.queued
        gathered.lost_track |= found.lost_track
    return gathered


class TestTwoBrokers:
    def test_a_task_added_by_one_broker_is_taken_by_the_other(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        queue(a, "t1", "t2")
        assert take(b) == ["t1", "t2"]
        assert state(a, "t1") == ASSIGNED
        assert take(a) == []

    def test_two_brokers_taking_at_once_never_get_the_same_task(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        for n in range(3000):
            a.add(TaskRecord(f"t{n}", "a" if n % 3 else "b"))
        assert a.flush() == []
        taken: dict[str, list[str]] = {"a": [], "b": []}

        def drain(name: str, store: RedisStore) -> None:
            while batch := store.take_many([(["a", "b"], 7), (["b"], 5)]):
                if not any(batch):
                    return
                taken[name] += [record.id for records in batch for record in records]

        threads = [threading.Thread(target=drain, args=item) for item in (("a", a), ("b", b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(30))
        assert taken["a"] and taken["b"]  # both took some
        assert sorted(taken["a"] + taken["b"]) == sorted(f"t{n}" for n in range(3000))
        assert dict(a.state_counts()) == {ASSIGNED: 3000}

    def test_a_finish_at_one_broker_reaches_the_other_through_fileno_and_changes(
        self, pair: tuple[RedisStore, RedisStore]
    ) -> None:
        a, b = pair
        a.attach("broker-a", 10.0)
        b.attach("broker-b", 10.0)
        queue(a, "t1", "t2", "t3")
        assert wait_for_changes(b, lambda found: found.queued).finished == []
        assert dict(b.queued_counts()) == {"a": 3}  # brought up to date by changes()
        assert take(b) == ["t1", "t2", "t3"]
        for task_id in ("t1", "t2", "t3"):  # three messages, which one read may bring at once
            assert b.finish_many([Outcome(task_id, FINISHED, task_id)]) == [True]
        found = wait_for_changes(a, lambda found: len(found.finished) >= 3)
        assert found.finished == ["t1", "t2", "t3"] and not found.lost_track
        fileno = a.fileno()
        assert fileno is not None and select.select([fileno], [], [], 0) == ([], [], [])  # all read
        assert a.changes() == Changes()
        assert b.changes().finished == []  # a broker is not told what it did itself

    def test_a_broker_alone_is_not_woken_by_what_it_does_itself(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, _ = pair
        a.attach("broker-a", 10.0)
        queue(a, "t1")
        assert take(a) == ["t1"]
        assert a.finish_many([Outcome("t1", FINISHED, 1)]) == [True]
        fileno = a.fileno()
        assert fileno is not None and select.select([fileno], [], [], 0.2) == ([], [], [])

    def test_a_broker_forgotten_when_its_lease_ran_out_hears_it_lost_track_at_its_next_heartbeat(
        self, pair: tuple[RedisStore, RedisStore]
    ) -> None:
        a, b = pair
        a.attach("broker-a", 0.2)
        b.attach("broker-b", 10.0)
        time.sleep(0.3)  # A's lease runs out (as in a long pause), and B forgets A, which holds nothing
        assert b.reclaim() == 0
        queue(b, "t1")  # A is told nothing of it now
        assert take(b) == ["t1"] and b.finish_many([Outcome("t1", FINISHED, 1)]) == [True]
        a.heartbeat()
        assert wait_for_changes(a, lambda found: found.lost_track).finished == []
        queue(b, "t2")  # and A is told again
        assert wait_for_changes(a, lambda found: found.queued).lost_track is False

    def test_an_expired_lease_is_reclaimed_in_the_old_places_and_not_before(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        a.attach("broker-a", 0.3)
        b.attach("broker-b", 10.0)
        queue(a, "t1", "t2", "t3", "t4")
        assert take(a, 2) == ["t1", "t2"]
        a.retry("t2", 1)  # a RETRY task is leased to the broker that will retry it
        queue(b, "t5")
        heartbeat = time.monotonic()
        a.heartbeat()
        assert b.reclaim() == 0  # A's lease runs
        assert (state(b, "t1"), state(b, "t2")) == (ASSIGNED, RETRY)
        deadline = time.monotonic() + scaled(5)
        while (reclaimed := b.reclaim()) == 0:
            assert time.monotonic() < deadline, "the lease was never reclaimed"
            time.sleep(0.02)
        assert time.monotonic() - heartbeat >= 0.3
        assert reclaimed == 2
        assert (state(b, "t1"), state(b, "t2")) == (QUEUED, QUEUED)
        taken = b.take_many([(["a"], 10)])[0]
        assert [(record.id, record.attempts) for record in taken] == [("t1", 0), ("t2", 1), ("t3", 0), ("t4", 0), ("t5", 0)]
        assert b.reclaim() == 0  # now B's

    def test_reclaim_never_touches_a_live_brokers_tasks(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        lease_s = scaled(0.6)  # A heartbeats 12 times a lease: a loaded machine may pause it a while
        a.attach("broker-a", lease_s)
        b.attach("broker-b", 10.0)
        queue(a, "t1", "t2")
        assert take(a, 1) == ["t1"]
        a.retry("t1", 1)
        b.claim(["t2"])
        end = time.monotonic() + 3 * lease_s
        while time.monotonic() < end:
            a.heartbeat()
            assert b.reclaim() == 0
            assert a.reclaim() == 0  # nor B's, whose lease runs too
            time.sleep(lease_s / 12)
        assert (state(b, "t1"), state(b, "t2")) == (RETRY, ASSIGNED)

    def test_recover_of_a_shared_store_leaves_a_live_brokers_tasks_alone(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        a.attach("broker-a", 10.0)
        queue(a, "t1", "t2", "t3")
        assert take(a, 2) == ["t1", "t2"]
        b.attach("broker-b", 10.0)
        assert b.recover() == 1
        assert (state(b, "t1"), state(b, "t2")) == (ASSIGNED, ASSIGNED)

    def test_a_broker_restarted_under_the_same_id_recovers_its_own_tasks(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, restarted = pair
        a.attach("broker-a", 60.0)
        queue(a, "t1", "t2", "t3")
        assert take(a, 2) == ["t1", "t2"]
        a.retry("t2", 1)
        restarted.attach("broker-a", 60.0)  # the same id, its lease still running: no node holds its tasks now
        assert restarted.recover() == 3
        assert take(restarted) == ["t1", "t2", "t3"]

    def test_a_restarted_broker_recovers_its_tasks_behind_many_finished_elsewhere(
        self, pair: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A broker's set of held tasks keeps the ids of tasks another broker claimed and finished (their
        nodes moved there) until a reclaim looks at them. Recover looks at RECLAIM_LIMIT ids a call (five
        here), at random: it goes on until none is left, not until a call queues nothing again, which left
        the one task still held behind 300 such ids with a chance of 98%."""
        monkeypatch.setattr(redis_store, "RECLAIM_LIMIT", 5)
        a, b = pair
        a.attach("broker-a", 60.0)
        task_ids = [f"t{n}" for n in range(301)]
        queue(a, *task_ids)
        assert len(take(a, 400)) == 301
        b.attach("broker-b", 60.0)
        moved = task_ids[:300]
        assert len(b.claim(moved)) == 300
        assert b.finish_many([Outcome(task_id, FINISHED, 1) for task_id in moved]) == [True] * 300
        assert b.flush() == []
        restarted = RedisStore(REDIS_URL, prefix=a.prefix)
        try:
            restarted.attach("broker-a", 60.0)  # the same id: no node holds its tasks now
            assert restarted.recover() == 1
            assert take(restarted) == ["t300"]
        finally:
            restarted.close()

    def test_a_call_sent_twice_is_answered_alike_and_done_once(self, pair: tuple[RedisStore, RedisStore]) -> None:
        """What redis-py sends again after a connection error (the first answer may have been lost)."""
        a, _ = pair
        a.attach("broker-a", 60.0)
        token = uuid.uuid4().hex
        first = _add_args("t1", "1.5")
        assert a._call("add", token, 1, 0, *first) == b"1"
        second = _add_args("t2", "2.5")
        assert a._call("add", token, 2, 0, *first, *second) == b"11"  # the batch grew while in doubt
        assert a._call("add", uuid.uuid4().hex, 1, 0, *first) == b"0"  # another batch: the id exists
        take_args = [token, 0, 1, 5, 1, "a", 1, "default"]
        taken = a._call("take", *take_args)
        assert taken[0][::TAKE_FIELDS] == [b"t1", b"t2"]
        assert [record.args for record in taken_tasks(taken[0])] == [[7], [7]]  # the row holds them
        assert a._call("take", *take_args)[0][::TAKE_FIELDS] == [b"t1", b"t2"]
        finish_args = [token, 2, "FF", "t1", b'{"result":1}', "t1", b'{"result":2}']
        assert a._call("finish", *finish_args) == b"10"
        assert a._call("finish", *finish_args) == b"10"
        assert a.finish_many([Outcome("t1", FINISHED, 3)]) == [False]
        assert dict(a.state_counts()) == {ASSIGNED: 1, FINISHED: 1}

    def test_a_closed_broker_gives_up_its_lease_at_once(self, pair: tuple[RedisStore, RedisStore]) -> None:
        a, b = pair
        a.attach("broker-a", 60.0)
        queue(a, "t1")
        assert take(a) == ["t1"]
        a.close()
        assert b.reclaim() == 1
        assert take(b) == ["t1"]

    def test_every_key_carries_the_queues_hash_tag(self, pair: tuple[RedisStore, RedisStore]) -> None:
        """One slot of a Cluster per store: named queues, schedules, slots, locks and buckets included."""
        a, b = pair
        a.attach("broker-a", 10.0)
        queue(a, "t1", "t2")
        take(a, 1)
        a.remember_methods(["a"])
        assert b.finish_many([Outcome("t2", FINISHED, 1)]) == [True]
        assert a.add(TaskRecord("io", "a", queue="io", priority=3)) and a.add(TaskRecord("s", "a", due_at=time.time() + 60))
        assert a.claim_slot("job", 60.0) and a.lock_unique("key", "io", time.time() + 60) is None
        assert a.take_tokens("a", 1.0, 1.0, 1) == 1
        a.flush()
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = [key.decode() for key in client.scan_iter(match=f"{a.prefix}:*")]
        assert len(keys) >= 17 and all(key.startswith(f"{a.prefix}:{{default}}:") for key in keys), keys


class TestRedisFailing:
    def test_flushed_tasks_survive_a_kill_of_redis(self, server: RedisServer) -> None:
        store = RedisStore(server.url, prefix="zt-test")
        for n in range(200):
            assert store.add(TaskRecord(f"t{n}", "a", [n], owner="key" if n % 2 else None))
        assert store.flush() == []
        assert take(store, 10) == [f"t{n}" for n in range(10)]
        assert store.finish_many([Outcome("t0", FINISHED, {"ok": 1.5})]) == [True]
        server.kill(signal.SIGKILL)
        server.start()
        reopened = RedisStore(server.url, prefix="zt-test")
        try:
            assert dict(reopened.queued_counts()) == {"a": 190}
            assert all(reopened.get(f"t{n}") is not None for n in range(200))
            record = reopened.get("t0")
            assert record is not None and (record.state, record.result) == (FINISHED, {"ok": 1.5})
            record = reopened.get("t199")
            assert record is not None and (record.args, record.owner) == ([199], "key")
            assert reopened.recover() == 199  # the nine held by a store that never attached
        finally:
            reopened.close()
            store.close()

    def test_every_call_raises_store_unavailable_promptly_while_redis_is_down(self, server: RedisServer) -> None:
        store = RedisStore(server.url, prefix="zt-test")
        store.attach("broker-a", 10.0)
        queue(store, "t1", "t2")
        server.kill(signal.SIGKILL)
        calls: dict[str, Callable[[], Any]] = {
            "get": lambda: store.get("t1"),
            "take_many": lambda: store.take_many([(["a"], 1)]),
            "claim": lambda: store.claim(["t1"]),
            "requeue": lambda: store.requeue(["t1"]),
            "retry": lambda: store.retry("t1", 1),
            "finish_many": lambda: store.finish_many([Outcome("t1", FINISHED, 1)]),
            "expire": lambda: store.expire(time.time()),
            "reset": lambda: store.reset("t1"),
            "list_tasks": lambda: store.list_tasks(),
            "state_counts": lambda: store.state_counts(),
            "oldest_queued": lambda: store.oldest_queued(),
            "reclaim": lambda: store.reclaim(),
            "recover": lambda: store.recover(),
            "heartbeat": lambda: store.heartbeat(),
            "changes": lambda: store.changes(),
            "known_methods": lambda: (store.remember_methods(["a"]), store.known_methods()),
            "flush": lambda: (store.add(TaskRecord("t3", "a")), store.flush()),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < scaled(2), f"{name} took too long"
        assert dict(store.queued_counts()) == {"a": 3}  # from memory, with the buffered add
        server.start()
        assert store.flush() == []  # the buffered add is written now
        assert take(store, 10) == ["t1", "t2", "t3"]
        store.close()

    def test_a_stopped_redis_makes_calls_time_out_and_nothing_is_lost_or_done_twice(self, server: RedisServer) -> None:
        """A Redis that answers nothing (stopped, or a host that drops packets) holds a call no longer than
        the socket timeout. Calls already sent run when it wakes up: a flush sent again adds nothing twice
        and refuses nothing it added itself; what a lost take_many took is queued again, in its place."""
        taker = RedisStore(server.url, prefix="zt-test")
        adder = RedisStore(server.url, prefix="zt-test")
        queue(taker, "t1", "t2")
        queue(adder, "t0")  # both have a connection open now, on which the next call goes out at once
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            assert adder.add(TaskRecord("t3", "a"))
            for call in (lambda: taker.take_many([(["a"], 2)]), adder.flush):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    call()
                assert time.monotonic() - started < scaled(2.5)
        finally:
            server.process.send_signal(signal.SIGCONT)
        with redis.Redis.from_url(server.url) as client:  # the calls did run, late
            deadline = time.monotonic() + scaled(5)
            while not client.hexists("zt-test:{default}:task", "t3"):
                assert time.monotonic() < deadline, "the flush sent before the stop never ran"
                time.sleep(0.02)
            assert client.hget("zt-test:{default}:task", "t1").startswith(b"ASSIGNED|")
        assert adder.flush() == []  # t3 is not refused: the store added it itself
        assert take(taker, 10) == ["t1", "t2", "t0", "t3"]  # t1 and t2 were taken by the lost call
        assert dict(taker.state_counts()) == {ASSIGNED: 4}
        for store in (taker, adder):
            store.close()

    def test_notifications_report_lost_track_after_a_reconnect(self, server: RedisServer) -> None:
        a = RedisStore(server.url, prefix="zt-test")
        b = RedisStore(server.url, prefix="zt-test")
        a.attach("broker-a", 10.0)
        b.attach("broker-b", 10.0)
        before = a.fileno()
        server.kill(signal.SIGKILL)
        server.start()
        found = wait_for_changes(a, lambda found: found.lost_track)
        assert found.finished == []
        assert a.fileno() is not None and before is not None
        queue(b, "t1")  # and the notifications come again
        assert wait_for_changes(a, lambda found: found.queued).lost_track is False
        for store in (a, b):
            store.close()
