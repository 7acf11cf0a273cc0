"""BrokerCore: named queues, priorities, and tasks due later (ETA and countdown), in-process.

Wall time follows the manual clock here (``time.time`` is patched), so a countdown is tested without
sleeping.
"""

from __future__ import annotations

import time

import pytest

from tests.core_helpers import assigned, connect, done
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.placement import Placement, read_placement, read_queues
from zerotask.exceptions import InvalidParams, QueueFull
from zerotask.testing import ManualClock
from zerotask.wire import FINISHED, QUEUED, REVOKED, SCHEDULED

EPOCH = 1_700_000_000.0


@pytest.fixture(autouse=True)
def wall_time_follows_the_clock(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: EPOCH + clock.now)


def place(core: BrokerCore, task_id: str, method: str = "a", **placement: object) -> str:
    return core.submit(method, [], {}, task_id, placement=Placement(**placement)).id  # type: ignore[arg-type]


# ---- queues -------------------------------------------------------------------------------------------


def test_a_node_is_sent_only_tasks_of_the_queues_it_serves(core: BrokerCore) -> None:
    core.connect(b"io-node", ["a"], 10, queues=frozenset({"io"}))
    connect(core, b"default-node", "a")
    place(core, "d1")
    place(core, "io1", queue="io")
    assert assigned(core) == {b"io-node": ["io1"], b"default-node": ["d1"]}


def test_a_node_serving_several_queues_takes_from_all_of_them(core: BrokerCore) -> None:
    core.connect(b"both", ["a"], 10, queues=frozenset({"io", "default"}))
    place(core, "d1")
    place(core, "io1", queue="io")
    assert assigned(core) == {b"both": ["d1", "io1"]}


def test_tasks_of_a_queue_no_node_serves_wait(core: BrokerCore) -> None:
    connect(core, b"n1", "a")
    place(core, "cpu1", queue="cpu")
    assert assigned(core) == {}
    core.connect(b"cpu-node", ["a"], 10, queues=frozenset({"cpu"}))
    assert assigned(core) == {b"cpu-node": ["cpu1"]}


def test_a_task_gets_the_queue_and_priority_its_node_announced_unless_the_caller_says(core: BrokerCore) -> None:
    core.defaults.announce({"a": {"queue": "io", "priority": 7}, "bad": {"queue": "no spaces", "priority": 3}})
    assert (core.find(place(core, "t1")).queue, core.find("t1").priority) == ("io", 7)
    place(core, "t2", queue="default", priority=1)
    assert (core.find("t2").queue, core.find("t2").priority) == ("default", 1)
    place(core, "t3", method="bad")
    assert (core.find("t3").queue, core.find("t3").priority) == ("default", 0)  # an invalid default is ignored


# ---- priorities ---------------------------------------------------------------------------------------


def test_higher_priorities_go_first_across_the_whole_queue(core: BrokerCore) -> None:
    for task_id, priority in (("low", 0), ("mid", 5), ("high", 9), ("low2", 0)):
        place(core, task_id, priority=priority)
    node = connect(core, b"n1", "a", credit=1)
    assert assigned(core) == {b"n1": ["high"]}
    core.report(node, [done("high")])
    core.grant(node, 3)
    assert assigned(core) == {b"n1": ["mid", "low", "low2"]}


# ---- ETA and countdown --------------------------------------------------------------------------------


def test_a_task_with_a_countdown_waits_scheduled_then_is_assigned_at_its_time(core: BrokerCore, clock: ManualClock) -> None:
    connect(core, b"n1", "a")
    place(core, "later", due_at=time.time() + 10)
    assert core.state(core.find("later")) == SCHEDULED
    assert assigned(core) == {}
    clock.advance(9.9)
    assert assigned(core) == {}
    clock.advance(0.1)
    assert core.store.get("later").state == QUEUED  # type: ignore[union-attr]
    assert assigned(core) == {b"n1": ["later"]}


def test_the_earliest_of_several_scheduled_tasks_is_due_first(core: BrokerCore, clock: ManualClock) -> None:
    connect(core, b"n1", "a")
    place(core, "in20", due_at=time.time() + 20)
    place(core, "in5", due_at=time.time() + 5)
    clock.advance(5)
    assert assigned(core) == {b"n1": ["in5"]}
    clock.advance(15)
    assert assigned(core) == {b"n1": ["in20"]}


def test_a_scheduled_task_can_be_revoked_and_never_runs(core: BrokerCore, clock: ManualClock) -> None:
    connect(core, b"n1", "a")
    place(core, "later", due_at=time.time() + 10)
    answers: list[str] = []
    core.wait(core.find("later"), lambda record: answers.append(record.state))
    assert core.revoke("later") == (REVOKED, None)
    clock.advance(20)
    assert assigned(core) == {} and answers == [REVOKED]


def test_a_task_due_already_is_queued_at_once(core: BrokerCore) -> None:
    connect(core, b"n1", "a")
    place(core, "past", due_at=time.time() - 5)
    assert assigned(core) == {b"n1": ["past"]}
    core.report(core.node(b"n1"), [done("past", 1)])  # type: ignore[arg-type]
    assert core.find("past").state == FINISHED


def test_scheduled_tasks_count_against_the_queue_bound(core: BrokerCore) -> None:
    core.max_queued = 2
    place(core, "s1", due_at=time.time() + 10)
    place(core, "q1")
    with pytest.raises(QueueFull):
        place(core, "s2", due_at=time.time() + 10)


# ---- reading the params -------------------------------------------------------------------------------


def test_placement_params_are_checked() -> None:
    assert read_placement({"method": "a"}) is None
    assert read_placement({"method": "a", "queue": "io", "priority": 9}) == Placement("io", 9, None)
    for bad in ({"priority": 10}, {"priority": -1}, {"priority": True}, {"queue": "a b"}, {"queue": ""}, {"queue": "x" * 65}):
        with pytest.raises(InvalidParams):
            read_placement({"method": "a", **bad})
    for bad in ({"countdown_s": -1}, {"countdown_s": 1e12}, {"countdown_s": 1, "eta": time.time()}):
        with pytest.raises(InvalidParams):
            read_placement({"method": "a", **bad})
    placed = read_placement({"method": "a", "countdown_s": 30})
    assert placed is not None and placed.due_at == pytest.approx(time.time() + 30)


def test_a_node_serves_the_default_queue_unless_it_names_its_own() -> None:
    assert read_queues(None) == {"default"}
    assert read_queues(["io", "cpu"]) == {"io", "cpu"}
    for bad in ([], ["a b"], "io", ["io"] * 101):
        with pytest.raises(InvalidParams):
            read_queues(bad)


# ---- unique tasks -------------------------------------------------------------------------------------


def test_a_unique_task_called_again_with_the_same_arguments_gets_the_first(core: BrokerCore, clock: ManualClock) -> None:
    core.defaults.announce({"a": {"unique_for": 60}})
    first = core.submit("a", [1], {"x": 1, "y": 2}, "first")
    again = core.submit("a", [1], {"y": 2, "x": 1}, "again")  # the same call, keywords in another order
    other = core.submit("a", [2], {"x": 1, "y": 2}, "other")
    assert again.id == "first" and first.id == "first" and other.id == "other"
    node = connect(core, b"n1", "a")
    assert assigned(core) == {b"n1": ["first", "other"]}
    assert core.submit("a", [1], {"x": 1, "y": 2}, "while-running").id == "first"
    core.report(node, [done("first")])
    assert core.submit("a", [1], {"x": 1, "y": 2}, "after").id == "after"  # the first ended: a new one


def test_a_unique_lock_lasts_unique_for_seconds_at_most(core: BrokerCore, clock: ManualClock) -> None:
    core.defaults.announce({"a": {"unique_for": 10}})
    core.submit("a", [1], {}, "first")
    clock.advance(11)
    assert core.submit("a", [1], {}, "second").id == "second"
