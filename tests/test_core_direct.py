"""The direct path (zerotask/broker/direct.py): a task that finds nothing queued and a free node goes to
that node at the round's end without the queue, the assigner's round or the store's take; everything
else about it is as if it had been queued and taken.
"""

from __future__ import annotations

import time

from tests.core_helpers import CountingStore, Recorder, assigned, connect, done, state_of, submit

# pytest finds fixtures by name in the test module: each is imported as itself (core needs clock and recorder).
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries, TimeLimits
from zerotask.broker.placement import Placement
from zerotask.store import SqliteStore
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FINISHED, QUEUED, REVOKED, SCHEDULED


def counted(clock: ManualClock) -> tuple[BrokerCore, CountingStore]:
    store = CountingStore()
    return BrokerCore(store, clock, [Retries(), TimeLimits(), Recorder()]), store


def test_a_task_with_a_free_node_and_nothing_queued_goes_to_it_without_a_take(clock: ManualClock) -> None:
    core, store = counted(clock)
    node = connect(core, credit=1)
    submit(core, 1)
    assert state_of(core, "a1") == ASSIGNED and core.holder("a1") == b"n1" and node.credit == 0
    assert dict(core.queued) == {}
    assert assigned(core) == {b"n1": ["a1"]}
    assert store.takes == 0
    core.report(node, [done("a1", 3)])
    assert state_of(core, "a1") == FINISHED and core.holder("a1") is None


def test_what_the_free_credit_does_not_cover_is_queued_and_taken_in_order(clock: ManualClock) -> None:
    core, store = counted(clock)
    node = connect(core, credit=2)
    submit(core, 5)
    assert dict(core.queued) == {"a": 3}
    assert assigned(core) == {b"n1": ["a1", "a2"]}  # the two direct ones; no credit left for a take
    core.report(node, [done("a1"), done("a2")])
    core.grant(node, 2)
    assert assigned(core) == {b"n1": ["a3", "a4"]}  # from the queue, in order
    core.grant(node, 5)
    submit(core, 1, prefix="late")  # a5 is still queued: the new task must not overtake it
    assert state_of(core, "late1") == QUEUED
    assert assigned(core) == {b"n1": ["a5", "late1"]}


def test_free_nodes_take_turns(core: BrokerCore) -> None:
    connect(core, b"n1", credit=5)
    connect(core, b"n2", credit=5)
    holders = [core.holder(task_id) for task_id in submit(core, 4)]
    assert sorted(holders) == [b"n1", b"n1", b"n2", b"n2"]  # type: ignore[type-var]


def test_a_node_that_does_not_serve_the_name_or_its_queue_or_is_draining_gets_nothing(core: BrokerCore) -> None:
    other = connect(core, b"other", "b", credit=5)
    draining = connect(core, b"draining", credit=5)
    core.release(draining, [], draining=True)
    core.connect(b"io", ["a"], 5, queues=frozenset({"io"}))
    core.submit("a", [], {}, "x1", placement=Placement(queue="io"))
    assert core.holder("x1") == b"io"
    submit(core, 1)
    assert state_of(core, "a1") == QUEUED
    assert other.held == {} and draining.held == {}


def test_a_task_due_later_or_of_a_rate_limited_name_takes_the_queue(core: BrokerCore) -> None:
    connect(core, b"n1", "a", "slow", credit=10)
    core.rate_limits.announce({"slow": {"rate_limit": "10/s"}})
    core.submit("a", [], {}, "later", placement=Placement(due_at=time.time() + 60))
    core.submit("slow", [], {}, "s1")
    assert (state_of(core, "later"), state_of(core, "s1")) == (SCHEDULED, QUEUED)


def test_a_task_revoked_before_the_round_ends_is_not_sent_and_its_credit_comes_back(core: BrokerCore) -> None:
    node = connect(core, credit=1)
    submit(core, 1)
    assert core.revoke("a1") == (REVOKED, b"n1")  # the node is told: it holds the task
    assert assigned(core) == {}
    assert node.credit == 1 and node.held == {}


def test_a_task_released_or_whose_node_is_lost_before_the_round_ends_is_queued_once(core: BrokerCore) -> None:
    node = connect(core, credit=2)
    submit(core, 2)
    core.release(node, ["a1"])
    core.lose(b"n1", "gone")
    assert dict(core.queued) == {"a": 2}
    again = connect(core, b"n1", credit=5, running=["a2"])  # back before the round ends, and says it runs a2
    assert core.holder("a2") == b"n1" and again.held.keys() == {"a2"}
    assert assigned(core) == {b"n1": ["a1"]}  # a1 from the queue; nothing of the lost node's handing
    record = core.store.get("a2")
    assert record is not None and record.state == ASSIGNED  # not put back in the queue by it either


def test_the_sqlite_store_keeps_a_task_handed_directly(clock: ManualClock, tmp_path: object) -> None:
    path = f"{tmp_path}/tasks.db"
    store = SqliteStore(path)
    core = BrokerCore(store, clock, [Retries(), TimeLimits()])
    connect(core, credit=1)
    submit(core, 1)
    assert core.commit() is True
    store.close()
    reopened = SqliteStore(path)
    try:
        record = reopened.get("a1")
        assert record is not None and record.state == ASSIGNED
    finally:
        reopened.close()
