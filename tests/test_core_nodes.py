"""BrokerCore and the nodes: fair assignment under credit, assignment order, started tasks, lost nodes and
nodes that connect again, released tasks and draining. The shared helpers and fixtures are in
tests/core_helpers.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.core_helpers import CountingStore, Recorder, assigned, connect, done, state_of, submit

# pytest finds fixtures by name in the test module: each is imported as itself (core needs clock and recorder).
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.assignment import NodeId
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries, TimeLimits
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FINISHED, QUEUED, RUNNING

# ---- assignment: fairness and credit ----------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 7, 10, 11, 40])
def test_two_equal_nodes_share_a_queue_evenly(core: BrokerCore, count: int) -> None:
    connect(core, b"n1", credit=100)
    connect(core, b"n2", credit=100)
    submit(core, count)
    handed = assigned(core)
    sizes = [len(handed.get(b"n1", [])), len(handed.get(b"n2", []))]
    assert sum(sizes) == count
    assert abs(sizes[0] - sizes[1]) <= 1
    assert sorted(handed.get(b"n1", []) + handed.get(b"n2", [])) == sorted(f"a{n}" for n in range(1, count + 1))
    assert dict(core.queued) == {}


def test_node_with_credit_one_gets_exactly_one_task(core: BrokerCore) -> None:
    node = connect(core, b"n1", credit=1)
    submit(core, 5)
    assert assigned(core) == {b"n1": ["a1"]}
    assert assigned(core) == {}
    assert node.credit == 0 and list(node.held) == ["a1"]
    assert dict(core.queued) == {"a": 4}


def test_node_never_gets_a_task_it_does_not_serve(core: BrokerCore) -> None:
    connect(core, b"na", "a", credit=100)
    nb = connect(core, b"nb", "b", credit=0)
    submit(core, 5, "b")
    submit(core, 2, "a")
    assert assigned(core) == {b"na": ["a1", "a2"]}
    assert dict(core.queued) == {"b": 5}
    core.grant(nb, 100)
    assert assigned(core) == {b"nb": [f"b{n}" for n in range(1, 6)]}


def test_rotation_gives_three_nodes_a_third_of_a_long_queue(core: BrokerCore) -> None:
    nodes = [connect(core, node_id, credit=1) for node_id in (b"n1", b"n2", b"n3")]
    submit(core, 300)
    got: Counter[NodeId] = Counter()
    while core.queued:
        for node, records in core.assign():
            got[node.id] += len(records)
            core.report(node, [done(record.id) for record in records])
        for node in nodes:
            core.grant(node, 1)
    assert sum(got.values()) == 300
    assert max(got.values()) - min(got.values()) <= 1


def test_rotation_spreads_single_tasks_over_idle_nodes(core: BrokerCore) -> None:
    for node_id in (b"n1", b"n2", b"n3"):
        connect(core, node_id, credit=1)
    got: Counter[NodeId] = Counter()
    for n in range(90):
        core.submit("a", [], {}, f"t{n}")
        ((node, records),) = core.assign()
        got[node.id] += 1
        core.report(node, [done(records[0].id)])
        core.grant(node, 1)
    assert got == {b"n1": 30, b"n2": 30, b"n3": 30}


def test_draining_node_gets_nothing(core: BrokerCore) -> None:
    draining = connect(core, b"n1", credit=5)
    core.release(draining, [], draining=True)
    connect(core, b"n2", credit=2)
    submit(core, 6)
    assert assigned(core) == {b"n2": ["a1", "a2"]}
    assert assigned(core) == {}
    assert draining.held == {}


def test_draining_flag_alone_keeps_a_node_out_of_assignment(core: BrokerCore) -> None:
    node = connect(core, b"n1", credit=5)
    node.draining = True  # even with credit left
    submit(core, 2)
    assert assigned(core) == {}


def test_assign_uses_up_credit_and_grant_adds_to_it(core: BrokerCore) -> None:
    node = connect(core, b"n1", credit=3)
    submit(core, 10)
    assert assigned(core) == {b"n1": ["a1", "a2", "a3"]}
    assert node.credit == 0
    core.grant(node, 2)
    assert node.credit == 2
    assert assigned(core) == {b"n1": ["a4", "a5"]}
    assert node.credit == 0 and len(node.held) == 5


def test_negative_grant_lowers_credit_but_never_below_zero(core: BrokerCore) -> None:
    node = connect(core, b"n1", credit=5)
    core.grant(node, -2)
    assert node.credit == 3
    core.grant(node, -10)
    assert node.credit == 0
    assert connect(core, b"n2", credit=-4).credit == 0


def test_assignment_is_fifo_across_names(core: BrokerCore) -> None:
    connect(core, b"n1", "a", "b", "c", credit=100)
    order = ["b1", "a1", "c1", "a2", "b2", "c2", "a3"]
    for task_id in order:
        core.submit(task_id[0], [], {}, task_id)
    assert assigned(core) == {b"n1": order}


def test_before_assign_hook_gets_each_node_and_its_tasks(core: BrokerCore, recorder: Recorder) -> None:
    connect(core, b"n1", credit=1)
    connect(core, b"n2", credit=1)
    submit(core, 2)
    handed = assigned(core)
    assert sorted(recorder.at("before_assign")) == sorted((node_id, ids) for node_id, ids in handed.items())


# ---- started, lost, connect again --------------------------------------------------------------------


def test_state_is_running_once_the_node_says_it_started(core: BrokerCore) -> None:
    node = connect(core)
    other = connect(core, b"n2", credit=0)
    submit(core, 2)
    assigned(core)
    assert state_of(core, "a1") == ASSIGNED
    core.started(other, ["a1"])  # not its task
    core.started(node, ["a1", "nope", 7, None])
    assert state_of(core, "a1") == RUNNING
    assert state_of(core, "a2") == ASSIGNED
    assert core.store.get("a1").state == ASSIGNED  # type: ignore[union-attr]  # RUNNING lives in memory only


def test_task_of_a_lost_node_goes_to_another_node_in_its_old_place(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core, credit=1)
    submit(core, 3)
    assert assigned(core) == {b"n1": ["a1"]}
    core.started(node, ["a1"])
    assert core.lose(b"n1", "silent") is node
    assert state_of(core, "a1") == QUEUED
    assert recorder.at("on_node_lost") == [(b"n1", ["a1"], "silent")]
    connect(core, b"n2", credit=2)
    assert assigned(core) == {b"n2": ["a1", "a2"]}
    assert state_of(core, "a1") == ASSIGNED  # not RUNNING: the new node has not said so yet


def test_reconnect_keeps_running_tasks_and_requeues_the_rest(core: BrokerCore, recorder: Recorder) -> None:
    connect(core, credit=3)
    submit(core, 4)
    assert assigned(core) == {b"n1": ["a1", "a2", "a3"]}
    node = connect(core, b"n1", credit=1, running=["a2", "nope", 7])
    assert list(node.held) == ["a2"]
    assert state_of(core, "a2") == RUNNING
    assert state_of(core, "a1") == QUEUED and state_of(core, "a3") == QUEUED
    assert dict(core.queued) == {"a": 3}
    assert recorder.at("on_node_lost") == [(b"n1", ["a1", "a2", "a3"], "connected again")]
    assert recorder.at("on_node_added") == [(b"n1",), (b"n1",)]
    assert assigned(core) == {b"n1": ["a1"]}  # the requeued tasks kept their places
    core.report(node, [done("a2", "kept")])
    assert core.find("a2").result == "kept"


def test_reconnect_does_not_take_a_task_another_node_holds(core: BrokerCore) -> None:
    connect(core, b"n1", credit=1)
    other = connect(core, b"n2", credit=1)
    submit(core, 2)
    handed = assigned(core)
    theirs = handed[b"n2"][0]
    node = connect(core, b"n1", credit=0, running=[theirs])
    assert theirs not in node.held and theirs in other.held
    assert core.find(theirs) is other.held[theirs]


def test_reconnect_does_not_revive_a_finished_task(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [done("a1")])
    node = connect(core, b"n1", running=["a1"])
    assert node.held == {} and state_of(core, "a1") == FINISHED


# ---- release and lose ------------------------------------------------------------------------------


def test_released_tasks_go_back_in_their_old_place(core: BrokerCore) -> None:
    node = connect(core, credit=3)
    other = connect(core, b"n2", credit=0)
    submit(core, 5)
    assert assigned(core) == {b"n1": ["a1", "a2", "a3"]}
    core.release(other, ["a1"])  # not its task: ignored
    assert "a1" in node.held
    core.release(node, ["a1", "a3", "a3", "nope", 5])
    assert list(node.held) == ["a2"]
    assert dict(core.queued) == {"a": 4}
    core.grant(other, 3)
    assert assigned(core) == {b"n2": ["a1", "a3", "a4"]}


def test_release_with_draining_zeroes_credit_and_ignores_grants(core: BrokerCore) -> None:
    node = connect(core, credit=2)
    submit(core, 4)
    assigned(core)
    core.grant(node, 5)
    core.release(node, ["a2"], draining=True)
    assert node.draining and node.credit == 0
    assert list(node.held) == ["a1"]
    core.grant(node, 5)
    assert node.credit == 0
    assert assigned(core) == {}
    core.report(node, [done("a1")])  # what it still runs may finish
    assert state_of(core, "a1") == FINISHED


def test_lose_requeues_every_held_task_and_tells_the_hooks(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core, b"n1", "a", "b", credit=10)
    submit(core, 2, "a")
    submit(core, 2, "b")
    assigned(core)
    lost = core.lose(b"n1", "silent for 9 s")
    assert lost is node and core.node(b"n1") is None and list(core.nodes) == []
    assert dict(core.queued) == {"a": 2, "b": 2}
    assert recorder.at("on_node_lost") == [(b"n1", ["a1", "a2", "b1", "b2"], "silent for 9 s")]
    for task_id in ("a1", "a2", "b1", "b2"):
        assert state_of(core, task_id) == QUEUED


def test_lose_of_an_unknown_node_returns_none(core: BrokerCore, recorder: Recorder) -> None:
    assert core.lose(b"nope", "gone") is None
    assert recorder.at("on_node_lost") == []


def test_nodes_serving_different_names_are_served_in_one_store_call(clock: ManualClock, recorder: Recorder) -> None:
    store = CountingStore()
    core = BrokerCore(store, clock, [Retries(), TimeLimits(), recorder])
    names = [f"m{n}" for n in range(20)]
    for name in names:  # (queued before the nodes come, so that nothing takes the direct path)
        submit(core, 50, name, prefix=f"{name}-")  # the "-" keeps ids apart: "m1" + "11" and "m11" + "1" would both be "m111"
    for name in names:
        connect(core, name.encode(), name, credit=50)
    handed = {node.id: records for node, records in core.assign()}
    assert store.takes == 1
    assert set(handed) == {name.encode() for name in names}
    for name in names:
        records = handed[name.encode()]
        assert len(records) == 50 and {record.method for record in records} == {name}
    assert dict(core.queued) == {}
