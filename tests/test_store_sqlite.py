"""The SQLite store's file: the journal (one row per flush), the archive of outcomes, and files made
before the journal. The behaviour every store shares is in test_store_contract.py."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.test_store_contract import Clock
from tests.test_store_contract import clock as clock  # (the fixture, by name)
from zerotask import jsonrpc
from zerotask.store import Outcome, SqliteStore, TaskRecord
from zerotask.store import sqlite as sqlite_store
from zerotask.store import sqlite_journal as journal
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED, RETRY, REVOKED, SCHEDULED


def rows(path: str, table: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


def run_tasks(store: SqliteStore, clock: Clock, count: int, prefix: str = "t") -> None:
    """Queue, take and finish ``count`` tasks one round each (FAILED for every third), a second apart."""
    for n in range(count):
        clock.now += 1
        task_id = f"{prefix}{n}"
        assert store.add(TaskRecord(task_id, "add", [n, 1]))
        (taken,) = store.take_many([(["add"], 1)])
        assert [record.id for record in taken] == [task_id]
        outcome = Outcome(task_id, FAILED, error={"code": 1, "message": "no"}, held=True) if n % 3 == 0 else None
        assert store.finish_many([outcome or Outcome(task_id, FINISHED, result=n + 1, held=True)]) == [True]
        store.flush()


def test_outcomes_beyond_the_recent_ones_are_archived_and_read_as_before(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "ARCHIVE_OVER", 5)
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    run_tasks(store, clock, 20)
    assert rows(path, "tasks") == 15  # the 5 latest are recent, in memory and the journal
    for reader in (store, SqliteStore(path)):
        try:
            first, last = reader.get("t1"), reader.get("t19")
            assert first is not None and (first.state, first.result, first.args) == (FINISHED, 2, [])
            assert last is not None and (last.state, last.result) == (FINISHED, 20)
            failed = reader.get("t3")
            assert failed is not None and (failed.state, failed.args, failed.error) == (
                FAILED,
                [3, 1],
                {"code": 1, "message": "no"},
            )
            assert dict(reader.state_counts()) == {FINISHED: 13, FAILED: 7}
            listed = reader.list_tasks(limit=20)
            assert [record.id for record in listed] == [f"t{n}" for n in reversed(range(20))]
            assert [record.id for record in reader.list_tasks(FAILED, limit=3)] == ["t18", "t15", "t12"]
            assert not reader.add(TaskRecord("t1", "add"))  # an archived id is taken
            assert not reader.add(TaskRecord("t19", "add"))  # and a recent one
        finally:
            if reader is not store:
                reader.close()
    # Expiry goes oldest first, through the archive and then the recent ones.
    assert store.expire(clock.now - 2, limit=100) == 17  # t0 to t16: 15 archived, 2 recent
    assert [store.get(task_id) is None for task_id in ("t0", "t16", "t17", "t19")] == [True, True, False, False]
    assert store.reset("t18")
    record = store.get("t18")
    assert record is not None and (record.state, record.args) == (QUEUED, [18, 1])
    store.close()
    reopened = SqliteStore(path)
    try:
        assert dict(reopened.state_counts()) == {QUEUED: 1, FINISHED: 2}
        assert reopened.get("t0") is None
        (taken,) = reopened.take_many([(["add"], 5)])
        assert [(record.id, record.args) for record in taken] == [("t18", [18, 1])]
    finally:
        reopened.close()


def test_an_archived_failed_task_can_be_reset_and_is_queued_after_a_reopen(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "ARCHIVE_OVER", 0)
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    run_tasks(store, clock, 4)
    assert rows(path, "tasks") == 4
    assert store.reset("t0") and not store.reset("t1")  # FAILED, then FINISHED
    store.close()
    reopened = SqliteStore(path)
    try:
        record = reopened.get("t0")
        assert record is not None and (record.state, record.args, record.error) == (QUEUED, [0, 1], None)
        assert dict(reopened.state_counts()) == {QUEUED: 1, FINISHED: 2, FAILED: 1}
    finally:
        reopened.close()


def test_outcomes_older_than_a_minute_are_archived_however_few(tmp_path: Path, clock: Clock) -> None:
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    try:
        run_tasks(store, clock, 3)
        assert rows(path, "tasks") == 0
        clock.now += sqlite_store.ARCHIVE_AFTER_S + 1
        store.flush()
        assert rows(path, "tasks") == 3
        assert store.get("t2") is not None
    finally:
        store.close()


def test_the_journal_is_rewritten_once_it_far_outgrows_the_tasks_held(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "REWRITE_OVER", 50)
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    for task_id in ("a", "b", "c"):
        assert store.add(TaskRecord(task_id, "add", [task_id]))
    store.retry("c", 3)
    store.flush()
    for _ in range(200):  # many ops, few tasks
        store.claim(["a"])
        store.requeue(["a"])
        store.flush()
    assert rows(path, "journal") < 60
    store.claim(["b"])
    store.close()
    reopened = SqliteStore(path)
    try:
        assert [reopened.get(task_id).state for task_id in ("a", "b", "c")] == [QUEUED, ASSIGNED, RETRY]  # type: ignore[union-attr]
        assert reopened.recover() == 3
        (taken,) = reopened.take_many([(["add"], 5)])
        assert [(record.id, record.attempts) for record in taken] == [("a", 0), ("b", 0), ("c", 3)]
    finally:
        reopened.close()


def test_a_scheduled_task_whose_time_came_stays_scheduled_across_a_reopen_until_due(tmp_path: Path, clock: Clock) -> None:
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    assert store.add(TaskRecord("early", "add"))
    assert store.add(TaskRecord("later", "add", due_at=clock.now + 5))
    assert store.add(TaskRecord("last", "add"))
    store.close()
    clock.now += 10
    reopened = SqliteStore(path)
    try:
        assert reopened.get("later").state == SCHEDULED  # type: ignore[union-attr]
        assert reopened.next_due() == clock.now - 5
        assert reopened.due(clock.now) == 1
        (taken,) = reopened.take_many([(["add"], 5)])
        assert [record.id for record in taken] == ["early", "later", "last"]  # in the place of its submission
    finally:
        reopened.close()


def test_a_file_of_the_version_before_the_journal_opens_with_tasks_in_every_state(tmp_path: Path, clock: Clock) -> None:
    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, method TEXT NOT NULL, params BLOB NOT NULL,
            state TEXT NOT NULL, outcome BLOB, attempts INTEGER NOT NULL DEFAULT 0, finished_at REAL, owner TEXT,
            created_at REAL, queue TEXT NOT NULL DEFAULT 'default', priority INTEGER NOT NULL DEFAULT 0, due_at REAL);
        CREATE INDEX queued_in_line ON tasks (method, queue, priority DESC, seq) WHERE state = 'QUEUED';
        CREATE INDEX scheduled_by_time ON tasks (due_at) WHERE state = 'SCHEDULED';
        CREATE INDEX finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
        CREATE TABLE methods (name TEXT PRIMARY KEY, announced_at REAL NOT NULL);
        """
    )
    now = clock.now
    old.executemany(
        "INSERT INTO tasks (id, method, params, state, outcome, attempts, finished_at, owner, created_at, queue, priority,"
        " due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("held", "add", b"[[1],{},{}]", ASSIGNED, None, 0, None, "key", now - 9, "default", 0, None),
            ("ok", "add", b"", FINISHED, b'{"result":3}', 0, now - 8, None, now - 9, "default", 0, None),
            ("retried", "add", b'[[2],{"k":1},{}]', RETRY, None, 2, None, None, now - 7, "default", 0, None),
            (
                "bad",
                "add",
                b"[[3],{},{}]",
                FAILED,
                b'{"error":{"code":1,"message":"no"}}',
                1,
                now - 6,
                None,
                now - 8,
                "io",
                0,
                None,
            ),
            ("queued", "add", b"[[4],{},{}]", QUEUED, None, 0, None, None, now - 5, "default", 0, None),
            ("urgent", "add", b"[[5],{},{}]", QUEUED, None, 0, None, None, now - 4, "default", 9, None),
            ("soon", "add", b"[[6],{},{}]", SCHEDULED, None, 0, None, None, now - 3, "default", 0, now + 60),
        ],
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    try:
        states = {task_id: store.get(task_id).state for task_id in ("held", "ok", "retried", "bad", "queued", "urgent", "soon")}  # type: ignore[union-attr]
        assert states == {
            "held": ASSIGNED,
            "ok": FINISHED,
            "retried": RETRY,
            "bad": FAILED,
            "queued": QUEUED,
            "urgent": QUEUED,
            "soon": SCHEDULED,
        }
        assert rows(path, "tasks") == 2  # only the outcomes stay there: the rest is the journal's
        assert dict(store.state_counts()) == {ASSIGNED: 1, FINISHED: 1, RETRY: 1, FAILED: 1, QUEUED: 2, SCHEDULED: 1}
        assert store.recover() == 4
        (taken,) = store.take_many([(["add"], 10)])
        assert [(record.id, record.attempts, record.owner) for record in taken] == [
            ("urgent", 0, None),
            ("held", 0, "key"),
            ("retried", 2, None),
            ("queued", 0, None),
        ]
        retried = store.get("retried")
        assert retried is not None and (retried.args, retried.kwargs) == ([2], {"k": 1})
        assert store.next_due() == now + 60
    finally:
        store.close()
    again = SqliteStore(path)
    try:
        assert again.get("held").state == ASSIGNED  # type: ignore[union-attr]
        bad = again.get("bad")
        assert bad is not None and (bad.queue, bad.args, bad.attempts) == ("io", [3], 1)
    finally:
        again.close()


def copy(store: SqliteStore, task_id: str) -> TaskRecord:
    """The task as the store has it now (a copy: the store changes its own)."""
    record = store.get(task_id)
    assert record is not None
    return dataclasses.replace(record)


def test_a_reopened_file_gives_back_every_field_of_every_task(tmp_path: Path, clock: Clock) -> None:
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    big = ["x" * 2000]  # packed by the memory store while it waits: the journal has it as it came
    adds = [
        TaskRecord("plain", "add", [1, 2]),
        TaskRecord("full", "mul", [3], {"k": 4}, options={"time_limit_s": 5}, owner="key", queue="io", priority=7),
        TaskRecord("later", "add", [5], due_at=clock.now + 60),
        TaskRecord("big", "add", big),
        *(TaskRecord(f"t{n}", "add", [n]) for n in range(6)),
    ]
    for record in adds:
        clock.now += 0.25
        assert store.add(record, 3000 if record.id == "big" else 20)
    clock.now += 0.25
    assert store.add_held(TaskRecord("direct", "add", [9], owner="key"), 20)
    clock.now += 1
    (taken,) = store.take_many([(["add", "mul"], 4)])
    assert [record.id for record in taken] == ["plain", "big", "t0", "t1"]
    clock.now += 1
    outcomes = [
        Outcome("plain", FINISHED, result={"sum": 3}, held=True),
        Outcome("t0", FAILED, error={"code": 1, "message": "no"}, held=True),
        Outcome("t2", REVOKED, error={"code": 2, "message": "revoked"}),
        Outcome("nobody", FINISHED, result=1),
    ]
    assert store.finish_many(outcomes) == [True, True, True, False]
    store.flush()
    clock.now += 1
    assert store.finish_many([Outcome("direct", FINISHED, result=10, held=True)]) == [True]
    store.retry("t1", 2)
    assert [record.id for record in store.claim(["t3"])] == ["t3"]
    store.flush()
    ids = [record.id for record in adds] + ["direct"]
    before = {task_id: copy(store, task_id) for task_id in ids}
    store.close()
    reopened = SqliteStore(path)
    try:
        assert {task_id: reopened.get(task_id) for task_id in ids} == before
        assert before["big"].args == big and before["direct"].finished_at == clock.now
        assert before["plain"].finished_at == before["t0"].finished_at == clock.now - 1
        assert [before[task_id].state for task_id in ("full", "later", "t1", "t3", "t4")] == [
            QUEUED,
            SCHEDULED,
            RETRY,
            ASSIGNED,
            QUEUED,
        ]
        (taken,) = reopened.take_many([(["add", "mul"], 10, ["default", "io"])])  # the first in line first
        assert [record.id for record in taken] == ["full", "t4", "t5"]
    finally:
        reopened.close()


def test_a_journal_of_the_earlier_per_task_ops_opens(tmp_path: Path, clock: Clock) -> None:
    """Before outcomes were journaled in one op per call, each had an ENDED op, and a task added held
    was PUT as QUEUED, then HELD."""
    path = str(tmp_path / "tasks.db")
    SqliteStore(path).close()
    now = clock.now
    ops = [
        [journal.PUT, "a", "add", [1], {}, {}, "default", 0, None, None, now - 5, 0, QUEUED],
        [journal.PUT, "b", "add", [2], {"k": 1}, {}, "io", 3, None, "key", now - 4, 0, QUEUED],
        [journal.PUT, "c", "add", [3], {}, {}, "default", 0, None, None, now - 3, 0, QUEUED],
        [journal.PUT, "d", "add", [4], {}, {}, "default", 0, None, None, now - 2, 0, QUEUED],
        [journal.HELD, "a", "b", "d"],
        [journal.ENDED, "a", FINISHED, 2, None, now - 1],
        [journal.ENDED, "b", FAILED, None, {"code": 1, "message": "no"}, now],
    ]
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO journal (entry) VALUES (?)", (jsonrpc.dumps(ops),))
    db.close()
    store = SqliteStore(path)
    try:
        a, b, c, d = (store.get(task_id) for task_id in "abcd")
        assert a is not None and (a.state, a.result, a.args, a.finished_at) == (FINISHED, 2, [], now - 1)
        assert b is not None and (b.state, b.error, b.args, b.kwargs, b.owner, b.queue, b.priority, b.finished_at) == (
            FAILED,
            {"code": 1, "message": "no"},
            [2],
            {"k": 1},
            "key",
            "io",
            3,
            now,
        )
        assert c is not None and (c.state, c.created_at) == (QUEUED, now - 3)
        assert d is not None and d.state == ASSIGNED
    finally:
        store.close()


@pytest.mark.parametrize(
    "field,value",
    [("kwargs", {"k": 1}), ("options", {"time_limit_s": 5}), ("queue", "io"), ("priority", 3), ("owner", "key"), ("attempts", 2)],
)
def test_a_task_added_with_one_field_not_at_its_default_is_read_back_with_it(
    tmp_path: Path, clock: Clock, field: str, value: Any
) -> None:
    """Tasks added with the defaults are journaled shorter (ADDED): any other is journaled whole (PUT)."""
    path = str(tmp_path / "tasks.db")
    store = SqliteStore(path)
    assert store.add(dataclasses.replace(TaskRecord("odd", "add", [1]), **{field: value}))
    assert store.add(TaskRecord("plain", "add", [2]))
    before = [copy(store, task_id) for task_id in ("odd", "plain")]
    assert getattr(before[0], field) == value
    store.close()
    reopened = SqliteStore(path)
    try:
        assert [reopened.get(task_id) for task_id in ("odd", "plain")] == before
    finally:
        reopened.close()
