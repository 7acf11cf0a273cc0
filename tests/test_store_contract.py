"""The Store contract: one suite that every Store implementation must pass.

The tests use only the interface in zerotask/store/base.py. To check a new store, add a factory to
STORES. The SQLite-only tests (durability of the file) are in TestSqliteDurability at the end; the
random sequences (TestRandomOperations) check every answer against ReferenceStore, the contract
written as plainly as it can be.
"""

from __future__ import annotations

import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.redis_helpers import bounded_modules, cluster_store, forget, redis_store
from tests.redis_helpers import redis_cluster as redis_cluster
from zerotask.store import MemoryStore, Outcome, SqliteStore, Store, TaskRecord, Want, sqlite_registry
from zerotask.store import memory as memory_store
from zerotask.store.base import METHODS_REMEMBERED_S, want_parts
from zerotask.testing import scaled
from zerotask.wire import ASSIGNED, FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, REVOKED, SCHEDULED

STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda directory: MemoryStore(),
    "sqlite": lambda directory: SqliteStore(str(directory / "tasks.db")),
    "redis": redis_store,  # on the Redis at ZEROTASK_TEST_REDIS, under a prefix of its own; skipped without one
}


@pytest.fixture(params=[*sorted(STORES), "redis-cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    # redis-cluster: a Redis Cluster of the test session's own (3 masters); the store's keys on one of them
    made = (
        cluster_store(request.getfixturevalue("redis_cluster"))
        if request.param == "redis-cluster"
        else STORES[request.param](tmp_path)
    )
    yield made
    made.close()
    forget(made)


class Clock:
    """What ``time.time()`` returns while a test runs: moved by hand, so expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(time, "time", made)
    return made


BOUNDED_MODULES = [memory_store, sqlite_registry, *bounded_modules()]  # where the stores read their bounds


def bound(monkeypatch: pytest.MonkeyPatch, name: str, value: int) -> None:
    """Lower one of base.py's bounds (MAX_REMEMBERED_METHODS...) for every store, for one test."""
    for module in BOUNDED_MODULES:
        monkeypatch.setattr(module, name, value)


def queue(store: Store, *calls: tuple[str, str]) -> None:
    """Add one task per ``(task id, method)``, in order, and flush."""
    for task_id, method in calls:
        assert store.add(TaskRecord(task_id, method, [task_id], {"method": method}))
    assert store.flush() == []


def added(store: Store, record: TaskRecord) -> bool:
    """Whether ``store`` queued ``record``, as base.py allows a store to answer: at add(), or (deferring
    the add) with True there and the record handed back by the next flush() if its id existed."""
    if not store.add(record):
        return False
    return not any(refused is record for refused in store.flush())


def take(store: Store, methods: Collection[str], limit: int) -> list[str]:
    """The ids take_many hands one want."""
    (taken,) = store.take_many([(methods, limit)])
    return ids(taken)


def finish(store: Store, task_id: str, state: str = FINISHED, result: Any = None, error: Any = None, held: bool = False) -> bool:
    """finish_many with one outcome."""
    (recorded,) = store.finish_many([Outcome(task_id, state, result, error, held)])
    return recorded


def ids(records: Iterable[TaskRecord]) -> list[str]:
    return [record.id for record in records]


def state(store: Store, task_id: str) -> str:
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    return record.state


def attempts(store: Store, task_id: str) -> int:
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    return record.attempts


def owner(store: Store, task_id: str) -> str | None:
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    return record.owner


def counts(store: Store) -> dict[str, int]:
    """queued_counts without zero entries: the contract does not say whether a store lists them."""
    return {method: count for method, count in store.queued_counts().items() if count}


def assert_same_json(actual: Any, expected: Any) -> None:
    """Equal, and of the same JSON types all the way down (1.0 must not come back as 1, nor True as 1)."""
    assert type(actual) is type(expected), f"{actual!r} is a {type(actual).__name__}, expected {expected!r}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same_json(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for got, wanted in zip(actual, expected, strict=True):
            assert_same_json(got, wanted)
    else:
        assert actual == expected


ERROR = {"code": -32000, "message": "ValueError: no", "data": {"type": "ValueError"}}

# Every kind of JSON value a result can be. Integers: the wire (orjson) carries -2**63 to 2**64 - 1, so
# nothing outside that range can reach a store.
JSON_VALUES: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative int": -42,
    "largest int64": 2**63 - 1,
    "smallest int64": -(2**63),
    "largest uint64": 2**64 - 1,
    "float": 0.1,
    "whole float": 3.0,
    "huge float": 1.7976931348623157e308,
    "tiny float": 5e-324,
    "empty string": "",
    "unicode": "héllo wörld, 日本語, emoji 🎉, rtl שלום",
    "control characters": 'nul \x00 tab \t newline \n quote " backslash \\',
    "empty list": [],
    "empty dict": {},
    "list of everything": [1, "two", 3.5, None, True, False, [], {}],
    "nested": {"a": {"b": {"c": [1, [2, [3, {"d": None}]]]}}, "ключ": "значение", "🎉": [0.5, -1]},
}


class TestAdd:
    def test_add_queues_the_task_and_get_returns_the_full_record(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", [1, 2], {"scale": 3}, options={"time_limit_s": 1.5})) is True
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.id, record.method, record.args, record.kwargs) == ("t1", "add", [1, 2], {"scale": 3})
        assert record.options == {"time_limit_s": 1.5}
        assert record.state == QUEUED
        assert record.result is None and record.error is None
        assert record.attempts == 0
        assert counts(store) == {"add": 1}

    @pytest.mark.parametrize("carried", [ASSIGNED, RETRY, FINISHED])
    def test_add_queues_whatever_state_the_record_carried(self, store: Store, carried: str) -> None:
        assert store.add(TaskRecord("t1", "add", state=carried))
        assert state(store, "t1") == QUEUED
        assert counts(store) == {"add": 1}
        assert take(store, ["add"], 10) == ["t1"]

    def test_add_of_a_duplicate_id_returns_false_and_changes_nothing(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", [1], {"a": 1}))
        assert added(store, TaskRecord("t1", "subtract", [9], {"b": 2})) is False
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.method, record.args, record.kwargs, record.state) == ("add", [1], {"a": 1}, QUEUED)
        assert counts(store) == {"add": 1}
        assert take(store, ["add", "subtract"], 10) == ["t1"]
        assert take(store, ["add", "subtract"], 10) == []

    def test_add_of_a_duplicate_id_leaves_a_held_task_held(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        assert take(store, ["add"], 1) == ["t1"]
        assert added(store, TaskRecord("t1", "add")) is False
        assert state(store, "t1") == ASSIGNED
        assert counts(store) == {}
        assert take(store, ["add"], 10) == []

    def test_add_of_a_duplicate_id_leaves_a_finished_task_finished(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        take(store, ["add"], 1)
        assert finish(store, "t1", FINISHED, result=3)
        assert added(store, TaskRecord("t1", "add", [1, 2])) is False
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result) == (FINISHED, 3)
        assert counts(store) == {}
        assert take(store, ["add"], 10) == []

    def test_the_owner_round_trips_through_get_take_many_and_finish(self, store: Store) -> None:
        """The key that submitted a task (with CURVE) decides who may query it: every read returns it."""
        key = "rq:rV}0aHk7Q6&1C>x@9H%8w^5:9%p]r(3h*Ek$z"  # a public key, Z85
        assert store.add(TaskRecord("mine", "add", [1], owner=key))
        assert store.add(TaskRecord("anyone", "add", [2]))
        store.flush()
        assert [owner(store, "mine"), owner(store, "anyone")] == [key, None]
        (taken,) = store.take_many([(["add"], 2)])
        assert [record.owner for record in taken] == [key, None]
        assert "owner" not in taken[0].to_wire()  # never sent to nodes
        assert finish(store, "mine", FINISHED, result=1, held=True)
        store.flush()
        assert owner(store, "mine") == key


class TestTakeMany:
    def test_take_many_gives_empty_lists_when_nothing_is_queued(self, store: Store) -> None:
        assert store.take_many([]) == []
        assert store.take_many([(["add"], 10), ([], 10)]) == [[], []]
        queue(store, ("t1", "add"))
        assert store.take_many([(["subtract"], 10), ([], 10)]) == [[], []]
        assert counts(store) == {"add": 1}

    def test_wants_for_methods_with_nothing_queued_get_empty_lists(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("a2", "a"))
        taken = store.take_many([(["x"], 5), ([], 5), (["a"], 5), (["x", "y"], 5)])
        assert [ids(records) for records in taken] == [[], [], ["a1", "a2"], []]

    def test_take_many_is_fifo_across_several_methods(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c"), ("b2", "b"), ("a3", "a"))
        assert take(store, ["a", "b", "c"], 10) == ["a1", "b1", "a2", "c1", "b2", "a3"]

    def test_take_many_respects_the_limit_and_continues_where_it_stopped(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"), ("a3", "a"))
        assert take(store, ["a", "b"], 2) == ["a1", "b1"]
        assert take(store, ["b", "a"], 2) == ["a2", "b2"]
        assert take(store, ["a", "b"], 2) == ["a3"]
        assert take(store, ["a", "b"], 2) == []

    @pytest.mark.parametrize("limit", [0, -1])
    def test_a_want_with_no_room_gets_an_empty_list(self, store: Store, limit: int) -> None:
        queue(store, ("a1", "a"), ("a2", "a"), ("a3", "a"))
        taken = store.take_many([(["a"], limit), (["a"], 1), (["a"], limit)])
        assert [ids(records) for records in taken] == [[], ["a1"], []]
        assert counts(store) == {"a": 2}
        assert state(store, "a2") == QUEUED

    def test_each_want_gets_its_own_list_in_order_oldest_first(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c"), ("b2", "b"), ("a3", "a"))
        taken = store.take_many([(["a"], 2), (["c", "b"], 10), (["a"], 10)])
        assert [ids(records) for records in taken] == [["a1", "a2"], ["b1", "c1", "b2"], ["a3"]]
        assert counts(store) == {}

    def test_wants_with_overlapping_methods_never_get_the_same_task(self, store: Store) -> None:
        queue(store, *[(f"{method}{n}", method) for n in range(1, 5) for method in "abc"])
        wants: list[Want] = [(["a", "b"], 3), (["b", "c"], 3), (["a", "b", "c"], 3), (["a"], 10)]
        taken = [ids(records) for records in store.take_many(wants)]
        assert taken == [["a1", "b1", "a2"], ["c1", "b2", "c2"], ["a3", "b3", "c3"], ["a4"]]
        assert counts(store) == {"b": 1, "c": 1}
        assert take(store, ["a", "b", "c"], 10) == ["b4", "c4"]

    def test_wants_for_one_method_split_its_queue(self, store: Store) -> None:
        queue(store, *[(f"a{n}", "a") for n in range(1, 8)])
        taken = store.take_many([(["a"], 2)] * 5)
        assert [ids(records) for records in taken] == [["a1", "a2"], ["a3", "a4"], ["a5", "a6"], ["a7"], []]
        assert counts(store) == {}

    def test_a_want_named_after_an_emptied_method_gets_nothing_more(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"))
        taken = store.take_many([(["a"], 10), (["a", "b"], 10), (["a"], 10)])
        assert [ids(records) for records in taken] == [["a1", "a2"], ["b1"], []]

    def test_take_many_only_takes_the_methods_asked_for(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b"))
        assert take(store, ["b"], 10) == ["b1", "b2"]
        assert take(store, {"a", "x"}, 10) == ["a1"]
        assert counts(store) == {"c": 1}
        assert state(store, "c1") == QUEUED

    def test_a_method_named_twice_in_a_want_takes_each_task_once(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("a2", "a"))
        assert take(store, ["a", "a"], 10) == ["a1", "a2"]
        assert take(store, ["a", "a"], 10) == []

    def test_take_many_marks_tasks_assigned_and_returns_their_call(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", [1, 2], {"scale": 3}, attempts=2, options={"time_limit_s": 1.5}))
        assert store.add(TaskRecord("t2", "add"))
        store.flush()
        ((taken,),) = store.take_many([(["add"], 1)])
        store.flush()
        assert taken.state == ASSIGNED
        assert taken.to_wire() == {
            "task_id": "t1",
            "method": "add",
            "args": [1, 2],
            "kwargs": {"scale": 3},
            "attempt": 2,
            "time_limit_s": 1.5,
        }
        assert state(store, "t1") == ASSIGNED
        assert state(store, "t2") == QUEUED
        assert counts(store) == {"add": 1}

    def test_take_many_never_returns_a_task_twice_across_calls(self, store: Store) -> None:
        queue(store, *[(f"t{n}", "add") for n in range(20)])
        first = take(store, ["add"], 7)
        second = take(store, ["add"], 100)
        assert first + second == [f"t{n}" for n in range(20)]
        assert take(store, ["add"], 100) == []


class TestClaim:
    def test_claim_moves_queued_retry_and_assigned_tasks_to_assigned_and_returns_them(self, store: Store) -> None:
        queue(store, ("assigned", "a"), ("retry", "a"), ("queued", "b"))
        assert take(store, ["a"], 2) == ["assigned", "retry"]
        store.retry("retry", 1)
        claimed = store.claim(["queued", "retry", "assigned"])
        store.flush()
        assert sorted((record.id, record.method, record.args, record.state) for record in claimed) == [
            ("assigned", "a", ["assigned"], ASSIGNED),
            ("queued", "b", ["queued"], ASSIGNED),
            ("retry", "a", ["retry"], ASSIGNED),
        ]
        assert [state(store, task_id) for task_id in ("assigned", "retry", "queued")] == [ASSIGNED] * 3
        assert attempts(store, "retry") == 1
        assert counts(store) == {}

    def test_claim_leaves_out_final_tasks_and_unknown_ids(self, store: Store) -> None:
        queue(store, ("done", "a"), ("failed", "a"), ("revoked", "a"), ("held", "a"))
        assert take(store, ["a"], 2) == ["done", "failed"]
        assert (
            store.finish_many([Outcome("done", FINISHED, 1), Outcome("failed", FAILED, error=ERROR), Outcome("revoked", REVOKED)])
            == [True] * 3
        )
        assert ids(store.claim(["done", "nope", "failed", "revoked", "held"])) == ["held"]
        assert [state(store, task_id) for task_id in ("done", "failed", "revoked")] == [FINISHED, FAILED, REVOKED]
        assert store.get("nope") is None
        assert store.claim([]) == []

    def test_a_claimed_queued_task_is_no_longer_taken(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"), ("t3", "a"))
        assert ids(store.claim(["t2"])) == ["t2"]
        assert counts(store) == {"a": 2}
        assert take(store, ["a"], 10) == ["t1", "t3"]
        assert state(store, "t2") == ASSIGNED

    def test_a_task_claimed_and_requeued_again_and_again_is_taken_once(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"))
        for _ in range(3):
            assert ids(store.claim(["t1"])) == ["t1"]
            store.requeue(["t1"])
        assert counts(store) == {"a": 2}
        assert take(store, ["a"], 10) == ["t1", "t2"]
        assert take(store, ["a"], 10) == []


HOLDING_STORES = ["memory", "sqlite"]  # holds_at_add: the broker's direct path adds tasks as held (add_held)


@pytest.fixture(params=HOLDING_STORES)
def holding(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = STORES[request.param](tmp_path)
    yield made
    made.close()


def test_only_the_stores_that_write_adds_at_once_hold_tasks_at_add(store: Store) -> None:
    holds = type(store).__name__ in ("MemoryStore", "SqliteStore")
    assert store.holds_at_add is holds
    if not holds:  # (Redis defers its adds to the round's write: a claim could not find the task yet)
        with pytest.raises(NotImplementedError):
            store.add_held(TaskRecord("h1", "a", []))


class TestAddHeld:
    """The direct path's add: as an add then a claim, in one step."""

    def test_a_task_added_held_is_assigned_with_its_arguments_and_never_taken(self, holding: Store) -> None:
        assert holding.add_held(TaskRecord("h1", "a", [1, 2], {"k": 3}, owner="alice"), 40)
        holding.flush()
        record = holding.get("h1")
        assert record is not None and (record.state, record.args, record.kwargs) == (ASSIGNED, [1, 2], {"k": 3})
        assert record.owner == "alice"
        assert record.created_at is not None
        assert counts(holding) == {} and holding.state_counts() == {ASSIGNED: 1}
        assert take(holding, ["a"], 10) == []

    def test_an_id_that_exists_is_refused_and_left_as_it_was(self, holding: Store) -> None:
        queue(holding, ("t1", "a"))
        assert not holding.add_held(TaskRecord("t1", "b", ["other"]))
        assert state(holding, "t1") == QUEUED and counts(holding) == {"a": 1}
        assert holding.add_held(TaskRecord("h1", "a", []))
        assert not holding.add_held(TaskRecord("h1", "a", []))
        assert holding.state_counts() == {QUEUED: 1, ASSIGNED: 1}

    def test_requeued_it_takes_its_place_before_tasks_queued_after_it(self, holding: Store) -> None:
        queue(holding, ("t1", "a"))
        assert take(holding, ["a"], 1) == ["t1"]
        assert holding.add_held(TaskRecord("h1", "a", ["h1"]))
        queue(holding, ("t2", "a"))
        holding.requeue(["h1", "t1"])
        assert counts(holding) == {"a": 3}
        assert take(holding, ["a"], 10) == ["t1", "h1", "t2"]
        record = holding.get("h1")
        assert record is not None and record.args == ["h1"]

    def test_it_ends_and_retries_as_a_taken_task(self, holding: Store) -> None:
        assert holding.add_held(TaskRecord("h1", "a", []))
        assert holding.add_held(TaskRecord("h2", "a", []))
        assert holding.finish_many([Outcome("h1", FINISHED, 3, held=True)]) == [True]
        holding.retry("h2", 1)
        holding.requeue(["h2"])
        assert (state(holding, "h1"), state(holding, "h2")) == (FINISHED, QUEUED)
        assert take(holding, ["a"], 10) == ["h2"] and attempts(holding, "h2") == 1


class TestRequeue:
    def test_requeue_puts_assigned_and_retry_tasks_back_in_their_places(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"), ("t3", "a"), ("t4", "a"))
        assert take(store, ["a"], 3) == ["t1", "t2", "t3"]
        store.retry("t2", 1)
        queue(store, ("t5", "a"))
        store.requeue(["t3", "t2"])
        assert (state(store, "t2"), state(store, "t3")) == (QUEUED, QUEUED)
        assert counts(store) == {"a": 4}
        assert take(store, ["a"], 10) == ["t2", "t3", "t4", "t5"]
        assert state(store, "t1") == ASSIGNED

    def test_a_requeued_task_is_taken_before_tasks_queued_after_it(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"))
        assert take(store, ["add"], 1) == ["t1"]
        queue(store, ("t3", "add"), ("s1", "subtract"))
        store.requeue(["t1"])
        assert state(store, "t1") == QUEUED
        assert counts(store) == {"add": 3, "subtract": 1}
        assert take(store, ["add", "subtract"], 10) == ["t1", "t2", "t3", "s1"]

    def test_requeue_ignores_queued_final_and_unknown_ids_and_repeats(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("q", "a"), ("done", "a"))
        assert take(store, ["a"], 1) == ["t1"]
        assert finish(store, "done", REVOKED)
        store.requeue(["t1", "t1", "q", "q", "done", "nope"])
        assert counts(store) == {"a": 2}
        assert state(store, "done") == REVOKED
        assert store.get("nope") is None
        assert take(store, ["a"], 10) == ["t1", "q"]
        assert take(store, ["a"], 10) == []


class TestRetry:
    def test_retry_records_the_attempts_of_a_held_task(self, store: Store) -> None:
        queue(store, ("t1", "a"))
        take(store, ["a"], 1)
        store.retry("t1", 1)
        store.flush()
        assert (state(store, "t1"), attempts(store, "t1")) == (RETRY, 1)
        store.retry("t1", 2)
        assert (state(store, "t1"), attempts(store, "t1")) == (RETRY, 2)
        assert counts(store) == {}
        assert take(store, ["a"], 10) == []

    def test_retry_of_a_queued_task_takes_it_out_of_the_queue(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"))
        store.retry("t1", 3)
        assert (state(store, "t1"), attempts(store, "t1")) == (RETRY, 3)
        assert counts(store) == {"a": 1}
        assert take(store, ["a"], 10) == ["t2"]

    @pytest.mark.parametrize("final", [FINISHED, FAILED, REVOKED])
    def test_retry_and_requeue_leave_a_final_task_alone(self, store: Store, final: str) -> None:
        queue(store, ("t1", "a"))
        take(store, ["a"], 1)
        assert finish(store, "t1", final, result=5 if final == FINISHED else None, error=ERROR if final == FAILED else None)
        store.retry("t1", 9)
        store.requeue(["t1"])
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.attempts) == (final, 0)
        assert counts(store) == {}
        assert take(store, ["a"], 10) == []

    def test_retry_of_an_unknown_id_does_nothing(self, store: Store) -> None:
        store.retry("nope", 1)
        store.flush()
        assert store.get("nope") is None
        assert counts(store) == {}

    def test_a_retried_task_requeued_is_taken_in_its_old_place_with_its_attempts(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"))
        assert take(store, ["a"], 1) == ["t1"]
        store.retry("t1", 1)
        queue(store, ("t3", "a"))
        store.requeue(["t1"])
        assert counts(store) == {"a": 3}
        (taken,) = store.take_many([(["a"], 10)])
        assert [(record.id, record.to_wire()["attempt"]) for record in taken] == [("t1", 1), ("t2", 0), ("t3", 0)]


class TestFinishMany:
    def test_finish_many_answers_one_bool_per_outcome(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "a"))
        take(store, ["a"], 1)
        outcomes = [
            Outcome("t1", FINISHED, 1),
            Outcome("nope", FINISHED, 2),
            Outcome("t2", REVOKED),
            Outcome("t1", FAILED, error=ERROR),
        ]
        assert store.finish_many(outcomes) == [True, False, True, False]
        assert store.finish_many([]) == []

    def test_finish_many_records_a_result(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        take(store, ["add"], 1)
        assert finish(store, "t1", FINISHED, result={"sum": 3}) is True
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result, record.error) == (FINISHED, {"sum": 3}, None)

    def test_finish_many_records_an_error_object(self, store: Store) -> None:
        error = {
            "code": -32000,
            "message": "ValueError: bad input ✗",
            "data": {"type": "ValueError", "message": "bad input ✗", "traceback": 'Traceback:\n  File "x.py"\nValueError'},
        }
        queue(store, ("t1", "add"))
        take(store, ["add"], 1)
        assert finish(store, "t1", FAILED, error=error) is True
        record = store.get("t1")
        assert record is not None
        assert record.state == FAILED
        assert record.result is None
        assert record.error is not None
        assert_same_json(record.error, error)

    def test_revoking_a_queued_task_takes_it_out_of_the_queue(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"))
        assert finish(store, "t1", REVOKED) is True
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result, record.error) == (REVOKED, None, None)
        assert counts(store) == {"add": 1}
        assert take(store, ["add"], 10) == ["t2"]

    def test_finish_many_ends_tasks_in_every_unfinished_state(self, store: Store) -> None:
        queue(store, ("queued", "a"), ("assigned", "a"), ("retry", "b"))
        store.claim(["assigned", "retry"])
        store.retry("retry", 1)
        assert (
            store.finish_many(
                [Outcome("queued", REVOKED), Outcome("assigned", FINISHED, 1), Outcome("retry", FAILED, error=ERROR)]
            )
            == [True] * 3
        )
        assert [state(store, task_id) for task_id in ("queued", "assigned", "retry")] == [REVOKED, FINISHED, FAILED]
        assert counts(store) == {}
        assert take(store, ["a", "b"], 10) == []

    @pytest.mark.parametrize("first", [FINISHED, FAILED, REVOKED])
    def test_the_first_outcome_of_a_task_wins_over_later_calls(self, store: Store, first: str) -> None:
        queue(store, ("t1", "add"))
        take(store, ["add"], 1)
        assert finish(store, "t1", first, result="first" if first == FINISHED else None, error=ERROR if first == FAILED else None)
        assert finish(store, "t1", FINISHED, result="second") is False
        assert finish(store, "t1", FAILED, error={"code": -32000, "message": "second"}) is False
        assert finish(store, "t1", REVOKED) is False
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert record.state == first
        assert record.result == ("first" if first == FINISHED else None)
        assert record.error == (ERROR if first == FAILED else None)

    @pytest.mark.parametrize("held", [False, True], ids=["checked", "held"])
    def test_the_first_outcome_in_one_batch_wins(self, store: Store, held: bool) -> None:
        queue(store, ("t1", "add"))
        take(store, ["add"], 1)
        batch = [
            Outcome("t1", FINISHED, "first", held=held),
            Outcome("t1", FAILED, error=ERROR),
            Outcome("t1", FINISHED, "third"),
        ]
        assert store.finish_many(batch) == [True, False, False]
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result, record.error) == (FINISHED, "first", None)

    def test_a_queued_task_ended_twice_in_one_batch_leaves_the_queue_once(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"), ("t3", "add"))
        assert store.finish_many([Outcome("t1", REVOKED), Outcome("t1", REVOKED), Outcome("t1", FINISHED)]) == [
            True,
            False,
            False,
        ]
        assert counts(store) == {"add": 2}
        assert take(store, ["add"], 10) == ["t2", "t3"]

    def test_finish_many_of_an_unknown_id_returns_false(self, store: Store) -> None:
        assert finish(store, "nope", FINISHED, result=1) is False
        assert store.finish_many([Outcome("nope", REVOKED), Outcome("nope", FAILED, error=ERROR)]) == [False, False]
        assert store.get("nope") is None

    def test_held_outcomes_are_recorded_and_seen_by_every_read(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"), ("t3", "add"), ("t4", "add"))
        assert take(store, ["add"], 3) == ["t1", "t2", "t3"]
        held = [Outcome("t1", FINISHED, result=1, held=True), Outcome("t2", FAILED, error=ERROR, held=True)]
        assert store.finish_many(held) == [True, True]
        record = store.get("t1")
        assert record is not None and (record.state, record.result) == (FINISHED, 1)
        record = store.get("t2")
        assert record is not None and (record.state, record.error) == (FAILED, ERROR)
        assert state(store, "t3") == ASSIGNED
        assert counts(store) == {"add": 1}
        assert finish(store, "t1", FAILED, error={"code": -32000, "message": "late"}) is False
        store.flush()
        assert state(store, "t1") == FINISHED

    def test_a_finished_task_keeps_its_outcome_and_only_a_failed_or_revoked_one_its_arguments(self, store: Store) -> None:
        for task_id in ("ok", "bad", "revoked"):
            assert store.add(TaskRecord(task_id, "add", [1, 2, "three"], {"four": [5]}))
        take(store, ["add"], 2)
        assert (
            store.finish_many(
                [Outcome("ok", FINISHED, [3]), Outcome("bad", FAILED, error=ERROR, held=True), Outcome("revoked", REVOKED)]
            )
            == [True] * 3
        )
        store.flush()
        for task_id, result, error in (("ok", [3], None), ("bad", None, ERROR), ("revoked", None, None)):
            record = store.get(task_id)
            assert record is not None
            kept = ([], {}) if task_id == "ok" else ([1, 2, "three"], {"four": [5]})
            assert (record.method, record.args, record.kwargs) == ("add", *kept)
            assert (record.result, record.error) == (result, error)

    @pytest.mark.parametrize("value", list(JSON_VALUES.values()), ids=list(JSON_VALUES))
    def test_results_of_every_json_type_round_trip(self, store: Store, value: Any) -> None:
        queue(store, ("t1", "echo"))
        take(store, ["echo"], 1)
        assert finish(store, "t1", FINISHED, result=value)
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert record.state == FINISHED
        assert_same_json(record.result, value)

    def test_arguments_of_every_json_type_round_trip(self, store: Store) -> None:
        args = list(JSON_VALUES.values())
        kwargs = {name.replace(" ", "_"): value for name, value in JSON_VALUES.items()}
        assert store.add(TaskRecord("t1", "echo", args, kwargs))
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert_same_json(record.args, args)
        assert_same_json(record.kwargs, kwargs)
        ((taken,),) = store.take_many([(["echo"], 1)])
        assert_same_json(taken.args, args)
        assert_same_json(taken.kwargs, kwargs)


class TestExpire:
    def test_expire_forgets_outcomes_recorded_before_the_time_and_nothing_else(self, store: Store, clock: Clock) -> None:
        queue(store, ("old", "a"), ("new", "a"), ("assigned", "a"), ("retry", "a"), ("waiting", "a"))
        take(store, ["a"], 4)
        store.retry("retry", 1)
        clock.now = 100.0
        assert finish(store, "old", FINISHED, result=1)
        clock.now = 200.0
        assert finish(store, "new", FAILED, error=ERROR, held=True)
        clock.now = 1_000.0
        assert store.expire(150.0) == 1
        assert store.get("old") is None
        assert state(store, "new") == FAILED
        assert store.expire(200.0) == 0  # strictly before
        assert store.expire(201.0) == 1
        assert store.get("new") is None
        assert store.expire(10_000.0) == 0
        assert [state(store, task_id) for task_id in ("assigned", "retry", "waiting")] == [ASSIGNED, RETRY, QUEUED]
        assert counts(store) == {"a": 1}

    def test_expire_is_bounded_by_its_limit_and_forgets_the_oldest_first(self, store: Store, clock: Clock) -> None:
        queue(store, *[(f"t{n}", "a") for n in range(5)])
        take(store, ["a"], 5)
        for n in reversed(range(5)):  # t4 ends first: the oldest outcome is not the oldest task
            clock.now += 1
            assert finish(store, f"t{n}", FINISHED, result=n)
        clock.now += 1
        assert store.expire(clock.now, limit=2) == 2
        assert [store.get(f"t{n}") is None for n in range(5)] == [False, False, False, True, True]
        assert store.expire(clock.now, limit=2) == 2
        assert [store.get(f"t{n}") is None for n in range(5)] == [False, True, True, True, True]
        assert store.expire(clock.now, limit=2) == 1
        assert store.expire(clock.now, limit=2) == 0

    @pytest.mark.parametrize("left_by", ["revoke", "claim", "retry", "take"])
    def test_an_expired_id_is_queued_again_at_the_back(self, store: Store, clock: Clock, left_by: str) -> None:
        queue(store, ("t1", "a"), ("t2", "a"))
        if left_by == "claim":
            store.claim(["t1"])
        elif left_by == "retry":
            store.retry("t1", 1)
        elif left_by == "take":
            assert take(store, ["a"], 1) == ["t1"]
        assert finish(store, "t1", REVOKED)
        clock.now += 1
        assert store.expire(clock.now) == 1
        queue(store, ("t3", "a"), ("t1", "a"))
        record = store.get("t1")
        assert record is not None and (record.state, record.args, record.attempts) == (QUEUED, ["t1"], 0)
        assert counts(store) == {"a": 3}
        assert take(store, ["a"], 10) == ["t2", "t3", "t1"]


class TestQueries:
    def test_get_of_an_unknown_id_returns_none(self, store: Store) -> None:
        assert store.get("nope") is None
        queue(store, ("t1", "add"))
        assert store.get("t2") is None

    def test_queued_counts_by_method_after_each_kind_of_operation(self, store: Store) -> None:
        assert counts(store) == {}
        queue(store, ("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a"), ("c1", "c"), ("c2", "c"))
        assert counts(store) == {"a": 3, "b": 1, "c": 2}
        assert take(store, ["a"], 2) == ["a1", "a2"]
        assert counts(store) == {"a": 1, "b": 1, "c": 2}
        store.claim(["b1"])
        assert counts(store) == {"a": 1, "c": 2}
        store.retry("c1", 1)
        assert counts(store) == {"a": 1, "c": 1}
        store.requeue(["a1", "b1"])
        assert counts(store) == {"a": 2, "b": 1, "c": 1}
        assert store.finish_many([Outcome("c2", REVOKED), Outcome("a2", FINISHED, held=True)]) == [True, True]
        assert counts(store) == {"a": 2, "b": 1}
        assert store.recover() == 4
        store.flush()
        assert counts(store) == {"a": 2, "b": 1, "c": 1}


class TestRecover:
    def test_recover_puts_held_and_retry_tasks_back_in_their_places(self, store: Store) -> None:
        queue(store, ("assigned", "a"), ("claimed", "a"), ("retry", "b"), ("done", "a"), ("failed", "b"), ("waiting", "a"))
        take(store, ["a", "b"], 5)
        store.claim(["claimed"])
        store.retry("retry", 2)
        assert finish(store, "done", FINISHED, result="kept")
        assert finish(store, "failed", FAILED, error=ERROR)
        store.flush()
        assert store.recover() == 4
        for task_id in ("assigned", "claimed", "retry", "waiting"):
            assert state(store, task_id) == QUEUED
        assert state(store, "done") == FINISHED
        assert state(store, "failed") == FAILED
        assert attempts(store, "retry") == 2
        assert counts(store) == {"a": 3, "b": 1}
        assert take(store, ["a", "b"], 10) == ["assigned", "claimed", "retry", "waiting"]

    def test_recover_counts_tasks_that_were_queued_already(self, store: Store) -> None:
        queue(store, ("t1", "a"), ("t2", "b"), ("t3", "a"))
        assert take(store, ["a"], 1) == ["t1"]
        assert store.recover() == 3
        assert store.recover() == 3
        assert counts(store) == {"a": 2, "b": 1}

    def test_recover_of_an_empty_store_returns_zero(self, store: Store) -> None:
        assert store.recover() == 0


class TestPrioritiesAndQueues:
    def test_a_higher_priority_is_taken_first_across_methods_then_the_earliest(self, store: Store) -> None:
        for task_id, method, priority in (
            ("low1", "a", 0),
            ("high1", "b", 9),
            ("mid", "a", 5),
            ("high2", "a", 9),
            ("low2", "b", 0),
        ):
            assert store.add(TaskRecord(task_id, method, priority=priority))
        store.flush()
        assert take(store, ["a", "b"], 10) == ["high1", "high2", "mid", "low1", "low2"]

    def test_a_requeued_task_keeps_its_place_among_its_priority(self, store: Store) -> None:
        for task_id, priority in (("p1", 5), ("p2", 5), ("p3", 0)):
            store.add(TaskRecord(task_id, "a", priority=priority))
        assert take(store, ["a"], 1) == ["p1"]
        store.requeue(["p1"])
        assert take(store, ["a"], 3) == ["p1", "p2", "p3"]

    def test_a_want_without_queues_takes_from_the_default_queue_only(self, store: Store) -> None:
        store.add(TaskRecord("io1", "a", queue="io"))
        store.add(TaskRecord("d1", "a"))
        store.flush()
        assert counts(store) == {"a": 2}  # by method, every queue together
        assert take(store, ["a"], 10) == ["d1"]
        (taken,) = store.take_many([(["a"], 10, ["io", "cpu"])])
        assert ids(taken) == ["io1"] and taken[0].queue == "io"

    def test_a_want_across_queues_takes_by_priority_then_submission(self, store: Store) -> None:
        for task_id, queue, priority in (("d1", "default", 0), ("io1", "io", 0), ("io2", "io", 3), ("d2", "default", 3)):
            store.add(TaskRecord(task_id, "a", queue=queue, priority=priority))
        (taken,) = store.take_many([(["a"], 10, ["default", "io"])])
        assert ids(taken) == ["io2", "d2", "d1", "io1"]


class TestScheduled:
    def test_a_task_due_later_waits_scheduled_and_is_not_taken(self, store: Store, clock: Clock) -> None:
        assert store.add(TaskRecord("later", "a", due_at=clock.now + 10))
        store.add(TaskRecord("now", "a", due_at=clock.now))
        store.flush()
        assert state(store, "later") == SCHEDULED and state(store, "now") == QUEUED
        assert counts(store) == {"a": 1}
        assert store.state_counts()[SCHEDULED] == 1
        assert store.next_due() == clock.now + 10
        assert take(store, ["a"], 10) == ["now"]

    def test_due_queues_tasks_whose_time_came_in_the_place_of_their_submission(self, store: Store, clock: Clock) -> None:
        store.add(TaskRecord("s2", "a", due_at=clock.now + 20))
        store.add(TaskRecord("s1", "a", due_at=clock.now + 10))
        store.add(TaskRecord("q", "a"))
        assert store.due(clock.now + 5) == 0
        assert store.due(clock.now + 20, limit=1) == 1  # the earliest due first: s1
        assert state(store, "s1") == QUEUED and state(store, "s2") == SCHEDULED
        assert store.next_due() == clock.now + 20
        assert store.due(clock.now + 20) == 1
        assert store.next_due() is None
        assert take(store, ["a"], 10) == ["s2", "s1", "q"]  # submitted in that order

    def test_a_scheduled_task_can_be_revoked_and_is_never_due_then(self, store: Store, clock: Clock) -> None:
        store.add(TaskRecord("s", "a", due_at=clock.now + 10))
        assert finish(store, "s", REVOKED, error=ERROR)
        assert store.next_due() is None
        assert store.due(clock.now + 100) == 0
        assert state(store, "s") == REVOKED

    def test_a_node_cannot_claim_a_scheduled_task_and_recover_leaves_it_waiting(self, store: Store, clock: Clock) -> None:
        store.add(TaskRecord("s", "a", due_at=clock.now + 10))
        assert store.claim(["s"]) == []
        store.recover()
        assert state(store, "s") == SCHEDULED

    def test_reset_queues_a_task_at_once_whatever_its_time(self, store: Store, clock: Clock) -> None:
        store.add(TaskRecord("s", "a", due_at=clock.now + 10))
        finish(store, "s", REVOKED, error=ERROR)
        assert store.reset("s")
        assert state(store, "s") == QUEUED
        assert take(store, ["a"], 1) == ["s"]


class TestPeriodicSlots:
    def test_a_slot_is_taken_once_and_never_an_earlier_one_after_it(self, store: Store) -> None:
        assert store.claim_slot("report", 60.0)
        assert not store.claim_slot("report", 60.0)
        assert not store.claim_slot("report", 0.0)
        assert store.claim_slot("other", 60.0)  # each name its own
        assert store.claim_slot("report", 120.0)
        store.flush()

    def test_at_most_the_latest_names_are_kept(self, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
        bound(monkeypatch, "MAX_REMEMBERED_METHODS", 2)
        for name in ("a", "b", "c"):
            clock.now += 1
            assert store.claim_slot(name, 10.0)
        assert store.claim_slot("a", 10.0)  # forgotten: claimable again (the one case a slot can run twice)
        assert not store.claim_slot("c", 10.0)


class TestUniqueLocks:
    def test_a_lock_is_held_while_its_task_has_no_outcome_and_its_time_lasts(self, store: Store, clock: Clock) -> None:
        queue(store, ("first", "a"), ("second", "a"))
        assert store.lock_unique("key", "first", clock.now + 60) is None
        assert store.lock_unique("key", "second", clock.now + 60) == "first"
        assert store.lock_unique("key", "first", clock.now + 60) is None  # its own holder may take it again
        assert store.lock_unique("other", "second", clock.now + 60) is None

    def test_a_lock_whose_task_ended_or_expired_goes_to_the_next(self, store: Store, clock: Clock) -> None:
        queue(store, ("first", "a"), ("second", "a"), ("third", "a"))
        store.lock_unique("key", "first", clock.now + 60)
        assert finish(store, "first", FINISHED, result=1)
        assert store.lock_unique("key", "second", clock.now + 60) is None
        clock.now += 61
        assert store.lock_unique("key", "third", clock.now + 60) is None

    def test_a_lock_of_an_unknown_task_holds_nothing_after_a_while(self, store: Store, clock: Clock) -> None:
        store.lock_unique("key", "never-added", clock.now + 60)
        queue(store, ("real", "a"))
        clock.now += 11  # a shared store may keep it for up to 10 s: another broker's add may be on its way
        assert store.lock_unique("key", "real", clock.now + 60) is None


class TestKnownMethods:
    def test_announced_names_are_known(self, store: Store) -> None:
        assert set(store.known_methods()) == set()
        store.remember_methods(["add", "mul"])
        store.remember_methods(["add", "tsum"])
        store.flush()
        assert set(store.known_methods()) == {"add", "mul", "tsum"}

    def test_a_name_not_announced_for_a_week_is_forgotten(self, store: Store, clock: Clock) -> None:
        store.remember_methods(["old"])
        clock.now += METHODS_REMEMBERED_S / 2
        store.remember_methods(["recent"])
        clock.now += METHODS_REMEMBERED_S / 2 + 1
        assert set(store.known_methods()) == {"recent"}
        store.remember_methods(["old"])  # announced again: known again
        assert set(store.known_methods()) == {"recent", "old"}

    def test_at_most_the_latest_names_are_remembered(self, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
        bound(monkeypatch, "MAX_REMEMBERED_METHODS", 3)
        for name in ("a", "b", "c", "d", "e"):
            clock.now += 1
            store.remember_methods([name])
        assert set(store.known_methods()) == {"c", "d", "e"}


# ---- random sequences ------------------------------------------------------------------------------


class ReferenceStore(Store):
    """The contract as plainly as it can be written: a dict in queue order, scanned on every call."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}  # in the order added: the queue's order
        self.ended_at: dict[str, float] = {}

    def add(self, record: TaskRecord) -> bool:
        if record.id in self.tasks:
            return False
        now = time.time()
        state = SCHEDULED if record.due_at is not None and record.due_at > now else QUEUED
        self.tasks[record.id] = replace(record, state=state, created_at=now, finished_at=None)
        return True

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        taken = []
        for want in wants:
            methods, limit, queues = want_parts(want)
            queued = [
                (-record.priority, index, record)
                for index, record in enumerate(self.tasks.values())
                if record.state == QUEUED and record.method in methods and record.queue in queues
            ]
            records = [record for _, _, record in sorted(queued, key=lambda item: item[:2])][: max(limit, 0)]
            for record in records:
                record.state = ASSIGNED
            taken.append(records)
        return taken

    def claim(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        claimed = [
            record
            for task_id in task_ids
            if (record := self.tasks.get(task_id)) and record.state not in FINAL_STATES and record.state != SCHEDULED
        ]
        for record in claimed:
            record.state = ASSIGNED
        return claimed

    def requeue(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            if (record := self.tasks.get(task_id)) and record.state in (ASSIGNED, RETRY):
                record.state = QUEUED

    def retry(self, task_id: str, attempts: int) -> None:
        if (record := self.tasks.get(task_id)) and record.state not in FINAL_STATES:
            record.state, record.attempts = RETRY, attempts

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        recorded = []
        for outcome in outcomes:
            record = self.tasks.get(outcome.task_id)
            recorded.append(record is not None and record.state not in FINAL_STATES)
            if record is not None and recorded[-1]:
                record.state, record.result, record.error = outcome.state, outcome.result, outcome.error
                if outcome.state == FINISHED:
                    record.args, record.kwargs = [], {}
                self.ended_at[record.id] = record.finished_at = time.time()
        return recorded

    def expire(self, before: float, limit: int = 10_000) -> int:
        oldest = sorted((when, task_id) for task_id, when in self.ended_at.items() if when < before)[: max(limit, 0)]
        for _, task_id in oldest:
            del self.tasks[task_id], self.ended_at[task_id]
        return len(oldest)

    def due(self, now: float, limit: int = 10_000) -> int:
        order = list(self.tasks)
        waiting = [record for record in self.tasks.values() if record.state == SCHEDULED and (record.due_at or 0.0) <= now]
        waiting.sort(key=lambda record: (record.due_at or 0.0, order.index(record.id)))
        for record in waiting[: max(limit, 0)]:
            record.state = QUEUED
        return len(waiting[: max(limit, 0)])

    def claim_slot(self, name: str, slot: float) -> bool:
        raise NotImplementedError("the random sequences do not claim slots")

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        raise NotImplementedError("the random sequences do not lock")

    def next_due(self) -> float | None:
        return min((record.due_at or 0.0 for record in self.tasks.values() if record.state == SCHEDULED), default=None)

    def get(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def queued_counts(self) -> Mapping[str, int]:
        return Counter(record.method for record in self.tasks.values() if record.state == QUEUED)

    def recover(self) -> int:
        self.requeue(list(self.tasks))
        return sum(self.queued_counts().values())

    def state_counts(self) -> Mapping[str, int]:
        return Counter(record.state for record in self.tasks.values())

    def oldest_queued(self) -> Mapping[str, float]:
        oldest: dict[str, float] = {}
        for record in self.tasks.values():
            if record.state == QUEUED and record.created_at is not None:
                oldest.setdefault(record.method, record.created_at)
        return oldest

    def list_tasks(
        self, state: str | None = None, method: str | None = None, limit: int = 100, before: float | None = None
    ) -> list[TaskRecord]:
        order = list(self.tasks.values())
        found = [
            (record.finished_at or record.created_at or 0.0, index, record)
            for index, record in enumerate(order)
            if (state is None or record.state == state)
            and (method is None or record.method == method)
            and (before is None or (record.finished_at or record.created_at or 0.0) < before)
        ]
        return [record for _, _, record in sorted(found, key=lambda item: item[:2], reverse=True)[: max(limit, 0)]]

    def remember_methods(self, methods: Iterable[str]) -> None:
        raise NotImplementedError("the random sequences do not announce names")

    def known_methods(self) -> Collection[str]:
        raise NotImplementedError("the random sequences do not announce names")

    def reset(self, task_id: str) -> bool:
        record = self.tasks.get(task_id)
        if record is None or record.state not in (FAILED, REVOKED):
            return False
        del self.tasks[task_id], self.ended_at[task_id]
        self.tasks[task_id] = replace(
            record, state=QUEUED, attempts=0, result=None, error=None, created_at=time.time(), due_at=None
        )
        self.tasks[task_id].finished_at = None
        return True


POOL = [f"t{n}" for n in range(40)]  # few ids, so that adds repeat ids and expired ids come back
METHODS = ["a", "b", "c"]
OPERATIONS = {
    "add": 30,
    "take_many": 20,
    "finish_many": 14,
    "requeue": 10,
    "retry": 8,
    "claim": 6,
    "expire": 6,
    "flush": 3,
    "recover": 1,
    "reopen": 2,
    "reset": 4,
    "due": 4,
}
QUEUES = ["default", "io"]


def random_operation(rng: random.Random, now: float, reference: Store) -> tuple[Any, ...]:
    """One operation with random arguments, unknown and repeated ids included. ``held`` is promised only
    for tasks ``reference`` has ASSIGNED, as the contract asks."""

    def some_ids() -> list[str]:
        return rng.sample([*POOL, "unknown"], rng.randint(0, 4))

    kind = rng.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
    if kind == "add":
        due_at = now + rng.randint(-2, 8) if rng.random() < 0.2 else None
        return ("add", rng.choice(POOL), rng.choice(METHODS), rng.choice(QUEUES), rng.choice([0, 0, 1, 9]), due_at)
    if kind == "take_many":
        wants: list[Want] = []
        for _ in range(rng.randint(0, 3)):
            methods, limit = rng.sample([*METHODS, "x"], rng.randint(0, 3)), rng.randint(-1, 4)
            wants.append(
                (methods, limit) if rng.random() < 0.5 else (methods, limit, rng.sample([*QUEUES, "y"], rng.randint(0, 3)))
            )
        return ("take_many", wants)
    if kind == "due":
        return ("due", now - rng.randint(0, 5), rng.randint(0, 3))
    if kind in ("claim", "requeue"):
        return (kind, some_ids())
    if kind == "retry":
        return ("retry", rng.choice([*POOL, "unknown"]), rng.randint(1, 5))
    if kind == "finish_many":
        outcomes = []
        for task_id in rng.choices([*POOL, "unknown"], k=rng.randint(0, 4)):
            record = reference.get(task_id)
            first = all(outcome.task_id != task_id for outcome in outcomes)
            held = first and record is not None and record.state == ASSIGNED and rng.random() < 0.7
            end = rng.choice([FINISHED, FAILED, REVOKED])
            result = rng.choice([None, rng.randint(0, 9), [task_id]]) if end == FINISHED else None
            error = {"code": -32000, "message": task_id} if end == FAILED else None
            outcomes.append(Outcome(task_id, end, result, error, held))
        return ("finish_many", outcomes)
    if kind == "expire":
        return ("expire", now - rng.randint(0, 40))
    if kind == "reset":
        return ("reset", rng.choice([*POOL, "unknown"]))
    return (kind,)


def apply(store: Store, operation: tuple[Any, ...]) -> Any:
    """Run one operation on ``store``; returns its answer as plain values, to compare."""
    match operation:
        case ("add", task_id, method, queue, priority, due_at):
            return added(
                store, TaskRecord(task_id, method, [task_id], {"method": method}, queue=queue, priority=priority, due_at=due_at)
            )
        case ("due", now, limit):
            return store.due(now, limit), store.next_due()
        case ("take_many", wants):
            return [
                [(record.id, record.method, record.args, record.attempts) for record in records]
                for records in store.take_many(wants)
            ]
        case ("claim", task_ids):
            return sorted((record.id, record.state) for record in store.claim(task_ids))
        case ("requeue", task_ids):
            return store.requeue(task_ids)
        case ("retry", task_id, count):
            return store.retry(task_id, count)
        case ("finish_many", outcomes):
            return store.finish_many(outcomes)
        case ("expire", before):
            return store.expire(before)
        case ("flush",):
            return store.flush()
        case ("recover",):
            return store.recover()
        case ("reset", task_id):
            return store.reset(task_id)
    raise AssertionError(f"unknown operation {operation}")


def describe(record: TaskRecord | None) -> tuple[Any, ...] | None:
    if record is None:
        return None
    return (record.method, record.state, record.attempts, record.args, record.kwargs, record.result, record.error) + (
        record.queue,
        record.priority,
    )


def view(store: Store) -> dict[str, tuple[Any, ...] | None]:
    """Every pool id as get() sees it."""
    return {task_id: describe(store.get(task_id)) for task_id in POOL}


def reopen(store: Store) -> Store:
    """The store as a broker that restarts finds it: an SQLite store opens its file afresh."""
    if isinstance(store, SqliteStore):
        store.close()
        return SqliteStore(store.path)
    return store


def run_in_lockstep(stores: list[Store], seed: int, steps: int, clock: Clock) -> None:
    """Apply the same seeded random operations to every store; after each, all must have answered
    alike, and show the same tasks through get(), and each must count its queued tasks exactly as
    get() shows them. Operations are drawn against ``stores[0]``. Closes every store."""
    rng = random.Random(seed)
    operations: set[str] = set()
    states: set[str] = set()
    try:
        for step in range(steps):
            clock.now += 1
            operation = random_operation(rng, clock.now, stores[0])
            operations.add(operation[0])
            if operation[0] == "reopen":
                stores[:] = [reopen(store) for store in stores]
                answers = [None] * len(stores)
            else:
                answers = [apply(store, operation) for store in stores]
            views = [view(store) for store in stores]
            where = f"step {step}, {operation}"
            for store, tasks in zip(stores, views, strict=True):
                queued = Counter(task[0] for task in tasks.values() if task is not None and task[1] == QUEUED)
                assert counts(store) == queued, f"{type(store).__name__} counts wrong after {where}"
                by_state = Counter(task[1] for task in tasks.values() if task is not None)
                assert {k: v for k, v in store.state_counts().items() if v} == by_state, f"state counts wrong after {where}"
                states.update(task[1] for task in tasks.values() if task is not None)
            for store, answer, tasks in zip(stores[1:], answers[1:], views[1:], strict=True):
                assert answer == answers[0], f"{type(store).__name__} answered otherwise at {where}"
                assert tasks == views[0], f"{type(store).__name__} holds other tasks after {where}"
    finally:
        for store in stores:
            store.close()
    # Every operation ran and every state was reached (and no other), or the sequence proves little.
    assert operations == set(OPERATIONS)
    assert states == {SCHEDULED, QUEUED, ASSIGNED, RETRY, *FINAL_STATES}


class TestRandomOperations:
    def test_every_answer_and_queued_count_matches_the_reference_after_every_operation(self, store: Store, clock: Clock) -> None:
        run_in_lockstep([ReferenceStore(), store], seed=20240611, steps=3_000, clock=clock)

    def test_memory_and_sqlite_answer_a_random_sequence_alike(self, tmp_path: Path, clock: Clock) -> None:
        run_in_lockstep([MemoryStore(), SqliteStore(str(tmp_path / "tasks.db"))], seed=7, steps=3_000, clock=clock)


# ---- SQLite only: the file ------------------------------------------------------------------------------


def _write_history(store: Store) -> None:
    """Tasks in every state, for the reopening tests: held ASSIGNED, retry RETRY (attempt 1), ok
    FINISHED, bad FAILED, q1 and q2 QUEUED."""
    for task_id, method in (("held", "a"), ("retry", "a"), ("ok", "a"), ("bad", "b"), ("q1", "a"), ("q2", "b")):
        assert store.add(TaskRecord(task_id, method, [task_id, 2**63 - 1], {"ü": [1.5, None]}))
    assert take(store, ["a", "b"], 4) == ["held", "retry", "ok", "bad"]
    store.retry("retry", 1)
    outcomes = [
        Outcome("ok", FINISHED, result={"nested": ["ok", 1.0, None, "日本"]}, held=True),
        Outcome("bad", FAILED, error=ERROR),
    ]
    assert store.finish_many(outcomes) == [True, True]
    store.flush()


def _assert_history(store: Store) -> None:
    """What _write_history left, as seen from a store that opened the file afresh; then recover, as a
    broker that starts does, puts the held and retried tasks back in their places."""
    ok, bad, held, retry, q1 = (store.get(task_id) for task_id in ("ok", "bad", "held", "retry", "q1"))
    assert ok is not None and bad is not None and held is not None and retry is not None and q1 is not None
    assert ok.state == FINISHED
    assert_same_json(ok.result, {"nested": ["ok", 1.0, None, "日本"]})
    assert (bad.state, bad.error) == (FAILED, ERROR)
    assert (held.state, retry.state, retry.attempts) == (ASSIGNED, RETRY, 1)
    assert (q1.method, q1.args, q1.kwargs, q1.state) == ("a", ["q1", 2**63 - 1], {"ü": [1.5, None]}, QUEUED)
    assert counts(store) == {"a": 1, "b": 1}
    assert store.recover() == 4
    assert counts(store) == {"a": 3, "b": 1}
    (taken,) = store.take_many([(["a", "b"], 10)])
    assert [(record.id, record.attempts) for record in taken] == [("held", 0), ("retry", 1), ("q1", 0), ("q2", 0)]


class TestSqliteDurability:
    def test_scheduled_tasks_queues_and_priorities_survive_closing_and_reopening(self, tmp_path: Path, clock: Clock) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        store.add(TaskRecord("s", "a", due_at=clock.now + 10, queue="io", priority=7))
        store.close()
        reopened = SqliteStore(path)
        try:
            record = reopened.get("s")
            assert record is not None
            assert (record.state, record.due_at, record.queue, record.priority) == (SCHEDULED, clock.now + 10, "io", 7)
            assert reopened.next_due() == clock.now + 10
        finally:
            reopened.close()

    def test_a_file_of_the_version_before_queues_opens_and_keeps_its_tasks(self, tmp_path: Path) -> None:
        path = str(tmp_path / "old.db")
        old = sqlite3.connect(path)
        old.executescript(
            "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, method TEXT NOT NULL,"
            " params BLOB NOT NULL, state TEXT NOT NULL, outcome BLOB, attempts INTEGER NOT NULL DEFAULT 0,"
            " finished_at REAL, owner TEXT, created_at REAL);"
            "CREATE INDEX queued_by_method ON tasks (method, seq) WHERE state = 'QUEUED';"
            """INSERT INTO tasks (id, method, params, state) VALUES ('old', 'add', '[[1, 2], {}, {}]', 'QUEUED');"""
        )
        old.close()
        store = SqliteStore(path)
        try:
            assert take(store, ["add"], 1) == ["old"]
            record = store.get("old")
            assert record is not None and (record.args, record.queue, record.priority) == ([1, 2], "default", 0)
        finally:
            store.close()

    def test_known_names_survive_closing_and_reopening(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        store.remember_methods(["add", "mul"])
        store.close()
        reopened = SqliteStore(path)
        try:
            assert set(reopened.known_methods()) == {"add", "mul"}
        finally:
            reopened.close()

    def test_the_owner_survives_closing_and_reopening(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        assert store.add(TaskRecord("mine", "add", owner="client-key"))
        store.close()
        reopened = SqliteStore(path)
        try:
            assert owner(reopened, "mine") == "client-key"
        finally:
            reopened.close()

    def test_what_was_flushed_survives_closing_and_reopening(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        _write_history(store)
        store.close()
        reopened = SqliteStore(path)
        try:
            _assert_history(reopened)
        finally:
            reopened.close()

    def test_a_task_added_held_survives_as_assigned_and_is_queued_again_by_recover(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        assert store.add_held(TaskRecord("h1", "add", [1, 2]))
        store.flush()
        store.close()
        second = SqliteStore(path)
        try:
            record = second.get("h1")
            assert record is not None and (record.state, record.args) == (ASSIGNED, [1, 2])
            second.recover()
            assert take(second, ["add"], 10) == ["h1"]
        finally:
            second.close()

    def test_close_makes_unflushed_writes_durable(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        for task_id in ("t1", "t2", "t3", "t4"):
            assert store.add(TaskRecord(task_id, "add", [1, 2]))
        assert take(store, ["add"], 2) == ["t1", "t2"]
        store.retry("t3", 2)
        assert finish(store, "t2", FINISHED, result=3, held=True)
        store.close()  # no flush: close promises one
        second = SqliteStore(path)
        try:
            assert [state(second, task_id) for task_id in ("t1", "t2", "t3", "t4")] == [ASSIGNED, FINISHED, RETRY, QUEUED]
            record = second.get("t1")
            assert record is not None and record.args == [1, 2]
            assert attempts(second, "t3") == 2
            assert counts(second) == {"add": 1}
        finally:
            second.close()

    def test_a_second_store_on_the_file_after_close_sees_everything(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        first = SqliteStore(path)
        _write_history(first)
        first.close()
        second = SqliteStore(path)
        try:
            assert not added(second, TaskRecord("ok", "a"))  # the ids are remembered too
            _assert_history(second)
            assert finish(second, "q1", FINISHED, result=1, held=True)
        finally:
            second.close()
        third = SqliteStore(path)
        try:
            assert state(third, "q1") == FINISHED
            assert state(third, "q2") == ASSIGNED
            assert counts(third) == {}
            assert third.recover() == 3
        finally:
            third.close()

    def test_flushed_tasks_survive_a_kill_of_the_process_and_recover_requeues_them(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        child = textwrap.dedent(
            f"""
            import sys
            from zerotask.store.sqlite import SqliteStore
            from tests.test_store_contract import _write_history

            store = SqliteStore({path!r})
            _write_history(store)
            print("flushed", flush=True)
            sys.stdin.read()  # wait for the kill; a parent that dies first closes stdin and ends us
            """
        )
        process = subprocess.Popen(
            [sys.executable, "-c", child],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], scaled(20))
            assert ready, "the child did not flush in time"
            assert process.stdout.readline() == b"flushed\n"
            process.send_signal(signal.SIGKILL)
            assert process.wait(scaled(10)) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(scaled(10))
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        reopened = SqliteStore(path)
        try:
            _assert_history(reopened)
        finally:
            reopened.close()


# ---- what an operator sees: counts by state, listings, reset ---------------------------------------------


class TestInspection:
    def test_state_counts_follow_every_kind_of_operation(self, store: Store, clock: Clock) -> None:
        queue(store, ("held", "a"), ("retry", "a"), ("q", "a"), ("ok", "b"), ("bad", "b"), ("gone", "b"))
        assert dict(store.state_counts()) == {QUEUED: 6}
        take(store, ["a"], 1)
        store.retry("retry", 1)
        store.finish_many([Outcome("ok", FINISHED, 1), Outcome("bad", FAILED, error=ERROR), Outcome("gone", REVOKED)])
        store.flush()
        assert dict(store.state_counts()) == {QUEUED: 1, ASSIGNED: 1, RETRY: 1, FINISHED: 1, FAILED: 1, REVOKED: 1}
        clock.now += 10
        assert store.expire(clock.now) == 3
        assert store.recover() == 3
        assert dict(store.state_counts()) == {QUEUED: 3}

    def test_state_counts_survive_reopening(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        first = SqliteStore(path)
        _write_history(first)
        first.close()
        second = SqliteStore(path)
        try:
            assert dict(second.state_counts()) == {QUEUED: 2, ASSIGNED: 1, RETRY: 1, FINISHED: 1, FAILED: 1}
        finally:
            second.close()

    def test_oldest_queued_is_the_created_at_of_the_first_in_line(self, store: Store, clock: Clock) -> None:
        queue(store, ("a1", "a"))
        clock.now += 5
        queue(store, ("a2", "a"), ("b1", "b"))
        assert dict(store.oldest_queued()) == {"a": clock.now - 5, "b": clock.now}
        take(store, ["a"], 1)
        assert dict(store.oldest_queued()) == {"a": clock.now, "b": clock.now}
        store.requeue(["a1"])  # back in its old place, with its old age
        assert dict(store.oldest_queued()) == {"a": clock.now - 5, "b": clock.now}
        finish(store, "b1", REVOKED)
        assert dict(store.oldest_queued()) == {"a": clock.now - 5}

    def test_records_carry_created_at_and_finished_at(self, store: Store, clock: Clock) -> None:
        queue(store, ("t1", "a"))
        created = clock.now
        clock.now += 3
        finish(store, "t1", FAILED, error=ERROR)
        store.flush()
        record = store.get("t1")
        assert record is not None and (record.created_at, record.finished_at) == (created, created + 3)

    def test_list_tasks_is_newest_first_filtered_limited_and_paged(self, store: Store, clock: Clock) -> None:
        for n in range(6):
            clock.now += 1
            queue(store, (f"t{n}", "a" if n % 2 else "b"))
        for n in (0, 1, 2):
            clock.now += 1
            finish(store, f"t{n}", FAILED, error=ERROR)
        store.flush()
        assert ids(store.list_tasks()) == ["t2", "t1", "t0", "t5", "t4", "t3"]
        assert ids(store.list_tasks(state=FAILED)) == ["t2", "t1", "t0"]
        assert ids(store.list_tasks(state=QUEUED)) == ["t5", "t4", "t3"]
        assert ids(store.list_tasks(method="a")) == ["t1", "t5", "t3"]
        assert ids(store.list_tasks(state=FAILED, method="b")) == ["t2", "t0"]
        assert ids(store.list_tasks(limit=2)) == ["t2", "t1"]
        page = store.list_tasks(state=FAILED, limit=2)
        assert ids(store.list_tasks(state=FAILED, before=page[-1].finished_at)) == ["t0"]
        assert store.list_tasks(state=FINISHED) == []
        (failed,) = store.list_tasks(state=FAILED, limit=1)
        assert (failed.error, failed.args) == (ERROR, ["t2"])

    def test_reset_queues_a_failed_or_revoked_task_again_at_the_back(self, store: Store, clock: Clock) -> None:
        queue(store, ("bad", "a"), ("gone", "a"), ("ok", "a"), ("waiting", "a"))
        take(store, ["a"], 3)
        store.retry("bad", 2)
        store.finish_many([Outcome("bad", FAILED, error=ERROR), Outcome("gone", REVOKED), Outcome("ok", FINISHED, 1)])
        clock.now += 7
        assert store.reset("bad") is True
        assert store.reset("gone") is True
        store.flush()
        for refused in ("ok", "waiting", "bad", "unknown"):  # finished, queued, queued again, unknown
            assert store.reset(refused) is False
        record = store.get("bad")
        assert record is not None
        assert (record.state, record.attempts, record.result, record.error) == (QUEUED, 0, None, None)
        assert (record.args, record.created_at, record.finished_at) == (["bad"], clock.now, None)
        assert counts(store) == {"a": 3}
        assert dict(store.state_counts()) == {QUEUED: 3, FINISHED: 1}
        assert take(store, ["a"], 3) == ["waiting", "bad", "gone"]

    def test_a_reset_task_is_not_expired_by_its_old_outcome(self, store: Store, clock: Clock) -> None:
        queue(store, ("t1", "a"))
        finish(store, "t1", FAILED, error=ERROR)
        assert store.reset("t1")
        clock.now += 10
        assert store.expire(clock.now) == 0
        assert state(store, "t1") == QUEUED


class TestGetMany:
    def test_get_many_answers_each_id_in_order(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"))
        found = store.get_many(["b1", "unknown", "a1"])
        assert [record.id if record is not None else None for record in found] == ["b1", None, "a1"]
        assert store.get_many([]) == []
