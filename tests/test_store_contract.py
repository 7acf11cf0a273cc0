"""The Store contract: one suite that every Store implementation must pass.

The tests use only the abstract interface in zerotask/store/__init__.py. To check a new store, add a
factory to STORES; the SQLite-only tests (durability of the file) are in TestSqliteDurability below.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zerotask.store import (
    ASSIGNED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    QUEUED,
    RETRY,
    REVOKED,
    RUNNING,
    Store,
    TaskRecord,
)
from zerotask.store.memory import MemoryStore
from zerotask.store.sqlite import SqliteStore
from zerotask.testing import scaled

STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda directory: MemoryStore(),
    "sqlite": lambda directory: SqliteStore(str(directory / "tasks.db")),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = STORES[request.param](tmp_path)
    yield made
    made.close()


def queue(store: Store, *calls: tuple[str, str]) -> None:
    """Add one task per ``(task id, method)``, in order, and flush."""
    for task_id, method in calls:
        assert store.add(TaskRecord(task_id, method, [task_id], {"method": method}))
    store.flush()


def ids(records: list[TaskRecord]) -> list[str]:
    return [record.id for record in records]


def state(store: Store, task_id: str) -> str:
    record = store.get(task_id)
    assert record is not None, f"{task_id} is unknown"
    return record.state


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
        assert store.add(TaskRecord("t1", "add", [1, 2], {"scale": 3}, attempts=0)) is True
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.id, record.method, record.args, record.kwargs) == ("t1", "add", [1, 2], {"scale": 3})
        assert record.state == QUEUED
        assert record.result is None and record.error is None
        assert record.attempts == 0

    def test_add_queues_whatever_state_the_record_carried(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", state=RUNNING))
        assert state(store, "t1") == QUEUED
        assert ids(store.take(["add"], 10)) == ["t1"]

    def test_add_of_a_duplicate_id_returns_false_and_changes_nothing(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", [1], {"a": 1}))
        assert store.add(TaskRecord("t1", "subtract", [9], {"b": 2})) is False
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.method, record.args, record.kwargs, record.state) == ("add", [1], {"a": 1}, QUEUED)
        assert counts(store) == {"add": 1}
        assert ids(store.take(["add", "subtract"], 10)) == ["t1"]
        assert store.take(["add", "subtract"], 10) == []

    def test_add_of_a_duplicate_id_leaves_a_finished_task_finished(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        assert store.finish("t1", FINISHED, result=3)
        assert store.add(TaskRecord("t1", "add", [1, 2])) is False
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result) == (FINISHED, 3)
        assert counts(store) == {}
        assert store.take(["add"], 10) == []


class TestTake:
    def test_take_returns_an_empty_list_when_nothing_is_queued(self, store: Store) -> None:
        assert store.take(["add"], 10) == []
        assert store.take([], 10) == []
        queue(store, ("t1", "add"))
        assert store.take(["subtract"], 10) == []
        assert store.take([], 10) == []

    def test_take_is_fifo_across_several_methods(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c"), ("b2", "b"), ("a3", "a"))
        assert ids(store.take(["a", "b", "c"], 10)) == ["a1", "b1", "a2", "c1", "b2", "a3"]

    def test_take_respects_the_limit_and_continues_where_it_stopped(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"), ("a3", "a"))
        assert ids(store.take(["a", "b"], 2)) == ["a1", "b1"]
        assert ids(store.take(["b", "a"], 2)) == ["a2", "b2"]
        assert ids(store.take(["a", "b"], 2)) == ["a3"]
        assert store.take(["a", "b"], 2) == []

    @pytest.mark.parametrize("limit", [0, -1])
    def test_take_with_no_room_takes_nothing(self, store: Store, limit: int) -> None:
        queue(store, ("a1", "a"), ("a2", "a"), ("a3", "a"))
        assert store.take(["a"], limit) == []
        assert counts(store) == {"a": 3}
        assert state(store, "a1") == QUEUED

    def test_take_only_takes_the_methods_asked_for(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b"))
        assert ids(store.take(["b"], 10)) == ["b1", "b2"]
        assert ids(store.take({"a", "x"}, 10)) == ["a1"]
        assert counts(store) == {"c": 1}
        assert state(store, "c1") == QUEUED

    def test_take_with_a_method_named_twice_takes_each_task_once(self, store: Store) -> None:
        queue(store, ("a1", "a"), ("a2", "a"))
        assert ids(store.take(["a", "a"], 10)) == ["a1", "a2"]
        assert store.take(["a", "a"], 10) == []

    def test_take_marks_tasks_assigned_and_returns_their_call(self, store: Store) -> None:
        assert store.add(TaskRecord("t1", "add", [1, 2], {"scale": 3}))
        assert store.add(TaskRecord("t2", "add"))
        store.flush()
        (taken,) = store.take(["add"], 1)
        store.flush()
        assert (taken.id, taken.method, taken.args, taken.kwargs) == ("t1", "add", [1, 2], {"scale": 3})
        assert taken.state == ASSIGNED
        assert state(store, "t1") == ASSIGNED
        assert state(store, "t2") == QUEUED
        assert counts(store) == {"add": 1}

    def test_take_never_returns_a_task_twice(self, store: Store) -> None:
        queue(store, *[(f"t{n}", "add") for n in range(20)])
        first = store.take(["add"], 7)
        second = store.take(["add"], 100)
        assert ids(first) + ids(second) == [f"t{n}" for n in range(20)]
        assert store.take(["add"], 100) == []


class TestSetState:
    def test_set_state_moves_a_task_through_non_final_states(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        store.set_state("t1", RUNNING)
        assert state(store, "t1") == RUNNING
        store.set_state("t1", RETRY, attempts=1)
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.attempts) == (RETRY, 1)

    def test_set_state_without_attempts_keeps_the_attempts(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        store.set_state("t1", RETRY, attempts=2)
        store.set_state("t1", QUEUED)
        record = store.get("t1")
        assert record is not None
        assert record.attempts == 2
        (taken,) = store.take(["add"], 1)
        assert taken.attempts == 2

    def test_set_state_can_change_only_the_attempts(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        store.set_state("t1", QUEUED, attempts=3)
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.attempts) == (QUEUED, 3)
        assert counts(store) == {"add": 1}
        assert ids(store.take(["add"], 10)) == ["t1"]

    def test_a_task_set_back_to_queued_keeps_its_place(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"))
        assert ids(store.take(["add"], 1)) == ["t1"]
        queue(store, ("t3", "add"), ("s1", "subtract"))
        store.set_state("t1", RUNNING)
        store.set_state("t1", QUEUED)
        assert state(store, "t1") == QUEUED
        assert counts(store) == {"add": 3, "subtract": 1}
        assert ids(store.take(["add", "subtract"], 10)) == ["t1", "t2", "t3", "s1"]

    def test_a_queued_task_set_to_another_state_leaves_the_queue(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"))
        store.set_state("t1", RETRY)
        assert counts(store) == {"add": 1}
        assert ids(store.take(["add"], 10)) == ["t2"]
        store.set_state("t1", QUEUED)
        assert ids(store.take(["add"], 10)) == ["t1"]

    @pytest.mark.parametrize("final", [FINISHED, FAILED, REVOKED])
    def test_set_state_on_a_final_task_does_nothing(self, store: Store, final: str) -> None:
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        assert store.finish("t1", final, result=5 if final == FINISHED else None)
        for new_state in (QUEUED, RUNNING, RETRY, ASSIGNED):
            store.set_state("t1", new_state, attempts=9)
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.attempts) == (final, 0)
        assert counts(store) == {}
        assert store.take(["add"], 10) == []

    def test_set_state_of_an_unknown_id_does_nothing(self, store: Store) -> None:
        store.set_state("nope", QUEUED, attempts=1)
        store.flush()
        assert store.get("nope") is None
        assert store.take(["add"], 10) == []


class TestFinish:
    def test_finish_records_a_result(self, store: Store) -> None:
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        store.set_state("t1", RUNNING)
        assert store.finish("t1", FINISHED, result={"sum": 3}) is True
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result, record.error) == (FINISHED, {"sum": 3}, None)

    def test_finish_records_an_error_object(self, store: Store) -> None:
        error = {
            "code": -32000,
            "message": "ValueError: bad input ✗",
            "data": {"type": "ValueError", "message": "bad input ✗", "traceback": 'Traceback:\n  File "x.py"\nValueError'},
        }
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        assert store.finish("t1", FAILED, error=error) is True
        record = store.get("t1")
        assert record is not None
        assert record.state == FAILED
        assert record.result is None
        assert record.error is not None
        assert_same_json(record.error, error)

    def test_finish_records_a_revocation_of_a_queued_task(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"))
        assert store.finish("t1", REVOKED) is True
        record = store.get("t1")
        assert record is not None
        assert (record.state, record.result, record.error) == (REVOKED, None, None)
        assert counts(store) == {"add": 1}
        assert ids(store.take(["add"], 10)) == ["t2"]

    @pytest.mark.parametrize("first", [FINISHED, FAILED, REVOKED])
    def test_finish_records_only_once(self, store: Store, first: str) -> None:
        error = {"code": -32000, "message": "first"}
        queue(store, ("t1", "add"))
        store.take(["add"], 1)
        assert store.finish("t1", first, result="first" if first == FINISHED else None, error=error if first == FAILED else None)
        assert store.finish("t1", FINISHED, result="second") is False
        assert store.finish("t1", FAILED, error={"code": -32000, "message": "second"}) is False
        assert store.finish("t1", REVOKED) is False
        store.flush()
        record = store.get("t1")
        assert record is not None
        assert record.state == first
        assert record.result == ("first" if first == FINISHED else None)
        assert record.error == (error if first == FAILED else None)

    def test_finish_of_an_unknown_id_returns_false(self, store: Store) -> None:
        assert store.finish("nope", FINISHED, result=1) is False
        assert store.get("nope") is None

    @pytest.mark.parametrize("value", list(JSON_VALUES.values()), ids=list(JSON_VALUES))
    def test_results_of_every_json_type_round_trip(self, store: Store, value: Any) -> None:
        queue(store, ("t1", "echo"))
        store.take(["echo"], 1)
        assert store.finish("t1", FINISHED, result=value)
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
        (taken,) = store.take(["echo"], 1)
        assert_same_json(taken.args, args)
        assert_same_json(taken.kwargs, kwargs)


class TestFinishUnfinished:
    def test_outcomes_written_without_checking_are_seen_by_every_read(self, store: Store) -> None:
        queue(store, ("t1", "add"), ("t2", "add"), ("t3", "add"))
        store.take(["add"], 3)
        store.finish_unfinished("t1", FINISHED, result=1)
        store.finish_unfinished("t2", FAILED, error={"code": -32000, "message": "boom"})
        record = store.get("t1")
        assert record is not None and (record.state, record.result) == (FINISHED, 1)
        assert state(store, "t2") == FAILED
        assert [record.id for record in store.unfinished()] == ["t3"]
        assert store.finish("t1", FAILED, error={"code": -32000, "message": "late"}) is False

    def test_outcomes_written_without_checking_survive_a_flush_and_reopen(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        first = SqliteStore(path)
        queue(first, ("t1", "add"))
        first.take(["add"], 1)
        first.finish_unfinished("t1", FINISHED, result=[1, 2])
        first.flush()
        first.close()
        second = SqliteStore(path)
        record = second.get("t1")
        second.close()
        assert record is not None and (record.state, record.result) == (FINISHED, [1, 2])


class TestExpire:
    def test_expire_forgets_outcomes_recorded_before_the_time_and_nothing_else(self, store: Store) -> None:
        queue(store, ("old", "add"), ("new", "add"), ("waiting", "add"))
        store.take(["add"], 2)
        store.finish("old", FINISHED, result=1)
        store.flush()
        cutoff = time.time()
        time.sleep(0.01)
        store.finish_unfinished("new", FAILED, error={"code": -32000, "message": "x"})
        assert store.expire(cutoff) == 1
        assert store.get("old") is None
        assert state(store, "new") == FAILED
        assert state(store, "waiting") == QUEUED
        assert store.expire(time.time() + 1) == 1
        assert store.get("new") is None and state(store, "waiting") == QUEUED

    def test_expire_is_bounded_by_its_limit(self, store: Store) -> None:
        queue(store, *[(f"t{i}", "add") for i in range(5)])
        store.take(["add"], 5)
        for i in range(5):
            store.finish(f"t{i}", FINISHED, result=i)
        assert store.expire(time.time() + 1, limit=3) == 3
        assert store.expire(time.time() + 1, limit=3) == 2


class TestQueries:
    def test_get_of_an_unknown_id_returns_none(self, store: Store) -> None:
        assert store.get("nope") is None
        queue(store, ("t1", "add"))
        assert store.get("t2") is None

    def test_unfinished_lists_every_task_that_is_not_final(self, store: Store) -> None:
        queue(store, ("q", "a"), ("assigned", "a"), ("running", "a"), ("retry", "b"), ("done", "a"), ("failed", "b"))
        queue(store, ("revoked", "b"))
        taken = store.take(["a", "b"], 5)
        assert ids(taken) == ["q", "assigned", "running", "retry", "done"]
        store.set_state("q", QUEUED)
        store.set_state("running", RUNNING)
        store.set_state("retry", RETRY, attempts=1)
        assert store.finish("done", FINISHED, result=1)
        assert store.finish("failed", FAILED, error={"code": -32000, "message": "no"})
        assert store.finish("revoked", REVOKED)
        store.flush()
        unfinished = {record.id: (record.method, record.state) for record in store.unfinished()}
        assert unfinished == {"q": ("a", QUEUED), "assigned": ("a", ASSIGNED), "running": ("a", RUNNING), "retry": ("b", RETRY)}
        assert all(record.state not in FINAL_STATES for record in store.unfinished())

    def test_unfinished_is_empty_for_an_empty_store(self, store: Store) -> None:
        assert list(store.unfinished()) == []

    def test_queued_counts_by_method(self, store: Store) -> None:
        assert counts(store) == {}
        queue(store, ("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a"), ("c1", "c"))
        assert counts(store) == {"a": 3, "b": 1, "c": 1}
        store.take(["a"], 2)
        assert counts(store) == {"a": 1, "b": 1, "c": 1}
        store.finish("c1", REVOKED)
        store.set_state("a1", QUEUED)
        store.flush()
        assert counts(store) == {"a": 2, "b": 1}

    def test_requeue_unfinished_puts_held_tasks_back_in_their_places(self, store: Store) -> None:
        queue(store, ("assigned", "a"), ("running", "a"), ("retry", "b"), ("done", "a"), ("failed", "b"), ("waiting", "a"))
        store.take(["a", "b"], 5)
        store.set_state("running", RUNNING)
        store.set_state("retry", RETRY, attempts=2)
        assert store.finish("done", FINISHED, result="kept")
        assert store.finish("failed", FAILED, error={"code": -32000, "message": "kept"})
        store.flush()
        assert store.requeue_unfinished() == 4
        for task_id in ("assigned", "running", "retry", "waiting"):
            assert state(store, task_id) == QUEUED
        assert state(store, "done") == FINISHED
        assert state(store, "failed") == FAILED
        retry = store.get("retry")
        assert retry is not None and retry.attempts == 2
        assert counts(store) == {"a": 3, "b": 1}
        assert ids(store.take(["a", "b"], 10)) == ["assigned", "running", "retry", "waiting"]

    def test_requeue_unfinished_of_an_empty_store_returns_zero(self, store: Store) -> None:
        assert store.requeue_unfinished() == 0


# ---- SQLite only: the file ------------------------------------------------------------------------------


def _write_history(store: Store) -> None:
    """Tasks in every state, for the reopening tests: q1/q2 QUEUED, run RUNNING, ok FINISHED, bad FAILED."""
    for task_id, method in (("run", "a"), ("ok", "a"), ("bad", "b"), ("q1", "a"), ("q2", "b")):
        assert store.add(TaskRecord(task_id, method, [task_id, 2**63 - 1], {"ü": [1.5, None]}))
    assert ids(store.take(["a", "b"], 3)) == ["run", "ok", "bad"]
    store.set_state("run", RUNNING, attempts=1)
    assert store.finish("ok", FINISHED, result={"nested": ["ok", 1.0, None, "日本"]})
    assert store.finish("bad", FAILED, error={"code": -32000, "message": "ValueError: no", "data": {"type": "ValueError"}})
    store.flush()


def _assert_history(store: Store) -> None:
    """What _write_history left, as seen from a store that opened the file afresh."""
    ok, bad, run, q1 = store.get("ok"), store.get("bad"), store.get("run"), store.get("q1")
    assert ok is not None and bad is not None and run is not None and q1 is not None
    assert ok.state == FINISHED
    assert_same_json(ok.result, {"nested": ["ok", 1.0, None, "日本"]})
    assert (bad.state, bad.error) == (FAILED, {"code": -32000, "message": "ValueError: no", "data": {"type": "ValueError"}})
    assert (run.state, run.attempts) == (RUNNING, 1)
    assert (q1.method, q1.args, q1.kwargs, q1.state) == ("a", ["q1", 2**63 - 1], {"ü": [1.5, None]}, QUEUED)
    assert counts(store) == {"a": 1, "b": 1}
    assert {record.id for record in store.unfinished()} == {"run", "q1", "q2"}
    assert store.requeue_unfinished() == 3
    assert ids(store.take(["a", "b"], 10)) == ["run", "q1", "q2"]


class TestSqliteDurability:
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

    def test_close_makes_unflushed_writes_durable(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        store = SqliteStore(path)
        assert store.add(TaskRecord("t1", "add", [1, 2]))
        assert store.add(TaskRecord("t2", "add"))
        store.take(["add"], 1)
        store.close()  # no flush: close promises one
        second = SqliteStore(path)
        try:
            assert state(second, "t1") == ASSIGNED
            assert state(second, "t2") == QUEUED
            record = second.get("t1")
            assert record is not None and record.args == [1, 2]
        finally:
            second.close()

    def test_a_second_store_on_the_file_after_close_sees_everything(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        first = SqliteStore(path)
        _write_history(first)
        first.close()
        second = SqliteStore(path)
        try:
            assert second.add(TaskRecord("ok", "a")) is False  # the ids are remembered too
            _assert_history(second)
            assert second.finish("q1", FINISHED, result=1)
        finally:
            second.close()
        third = SqliteStore(path)
        try:
            assert state(third, "q1") == FINISHED
            assert state(third, "q2") == ASSIGNED
        finally:
            third.close()

    def test_flushed_tasks_survive_a_kill_of_the_process(self, tmp_path: Path) -> None:
        path = str(tmp_path / "tasks.db")
        child = textwrap.dedent(
            f"""
            import sys
            from zerotask.store import TaskRecord
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
