"""BrokerCore in-process, as dramatiq's StubBroker or huey's MemoryHuey: a MemoryStore, a manual clock, no
sockets, no processes, no sleeps. Submit, assign, report, retry, revoke and requeue, checked in milliseconds.

Every core here carries ``Recorder``, a hook that writes down each call it gets, so the tests also check that
the hooks are called at the points zerotask.broker.hooks documents.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from zerotask import wire
from zerotask.broker.assignment import NodeId, NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Hooks, Retries, TimeLimits
from zerotask.exceptions import InvalidParams, UnknownMethod, UnknownTask
from zerotask.store import MemoryStore, TaskRecord
from zerotask.task import Dispatcher, task
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, REVOKED, RUNNING

# ---- helpers ---------------------------------------------------------------------------------------


class Recorder(Hooks):
    """A hook that records every call, as ``(point, ...)`` tuples of plain values, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def at(self, point: str) -> list[tuple[Any, ...]]:
        """The calls at one point, without the point's name."""
        return [call[1:] for call in self.calls if call[0] == point]

    def before_enqueue(self, record: TaskRecord) -> None:
        self.calls.append(("before_enqueue", record.id))

    def after_enqueue(self, record: TaskRecord) -> None:
        self.calls.append(("after_enqueue", record.id, record.state))

    def before_assign(self, node: NodeSlot, records: list[TaskRecord]) -> None:
        self.calls.append(("before_assign", node.id, [record.id for record in records]))

    def retry_delay(self, record: TaskRecord, error: dict[str, Any]) -> float | None:
        self.calls.append(("retry_delay", record.id, error["code"]))
        return None

    def on_retry(self, record: TaskRecord, attempt: int, delay_s: float) -> None:
        self.calls.append(("on_retry", record.id, attempt, delay_s))

    def after_finish(self, record: TaskRecord) -> None:
        self.calls.append(("after_finish", record.id, record.state))

    def on_node_added(self, node: NodeSlot) -> None:
        self.calls.append(("on_node_added", node.id))

    def on_node_lost(self, node: NodeSlot, requeued: list[TaskRecord], reason: str) -> None:
        self.calls.append(("on_node_lost", node.id, sorted(record.id for record in requeued), reason))


def make_core(
    clock: ManualClock | None = None,
    recorder: Recorder | None = None,
    *,
    retries: Retries | None = None,
    local: Dispatcher | None = None,
    result_ttl_s: float | None = None,
) -> BrokerCore:
    """The core under test: a MemoryStore, the built-in hooks first, then the recorder."""
    hooks = [retries or Retries(), TimeLimits(), recorder or Recorder()]
    return BrokerCore(MemoryStore(), clock or ManualClock(), hooks, local=local, result_ttl_s=result_ttl_s)


def connect(core: BrokerCore, node_id: NodeId = b"n1", *methods: str, credit: int = 10, running: Iterable[Any] = ()) -> NodeSlot:
    """Connect a node (default b"n1") serving ``methods`` (default: "a")."""
    return core.connect(node_id, methods or ("a",), credit, running)


def submit(core: BrokerCore, count: int, method: str = "a", prefix: str | None = None) -> list[str]:
    """Submit ``count`` tasks named ``method`` with ids ``<prefix><n>``, from 1; returns the ids."""
    prefix = method if prefix is None else prefix
    return [core.submit(method, [n], {}, f"{prefix}{n}").id for n in range(1, count + 1)]


def assigned(core: BrokerCore) -> dict[NodeId, list[str]]:
    """One round of assignment: node id -> the ids of the tasks it was handed, in order."""
    return {node.id: [record.id for record in records] for node, records in core.assign()}


def done(task_id: str, result: Any = None) -> dict[str, Any]:
    return {"task_id": task_id, "result": result}


def failed(task_id: str, **data: Any) -> dict[str, Any]:
    """A failure outcome; ``data`` goes into the error object (``retry_in_s=...`` asks for a retry)."""
    return {"task_id": task_id, "error": {"code": wire.TASK_FAILED, "message": "ValueError: boom", "data": data}}


def state_of(core: BrokerCore, task_id: str) -> str:
    """The state a caller sees."""
    return core.state(core.find(task_id))


def brute_queued(core: BrokerCore, task_ids: Iterable[str]) -> dict[str, int]:
    """Count the QUEUED tasks by name, task by task, from the store."""
    counts: Counter[str] = Counter()
    for task_id in task_ids:
        record = core.store.get(task_id)
        if record is not None and record.state == QUEUED:
            counts[record.method] += 1
    return dict(counts)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def core(clock: ManualClock, recorder: Recorder) -> BrokerCore:
    return make_core(clock, recorder)


# ---- submit ----------------------------------------------------------------------------------------


def test_submit_queues_the_task(core: BrokerCore, recorder: Recorder) -> None:
    record = core.submit("a", [1, 2], {"x": 3}, "t1")
    submit(core, 2, "b")
    assert (record.id, record.state, record.args, record.kwargs) == ("t1", QUEUED, [1, 2], {"x": 3})
    assert core.find("t1") is record
    assert state_of(core, "t1") == QUEUED
    assert dict(core.queued) == {"a": 1, "b": 2}
    assert recorder.at("before_enqueue")[0] == ("t1",)
    assert recorder.at("after_enqueue")[0] == ("t1", QUEUED)


def test_submit_without_task_id_makes_a_fresh_one(core: BrokerCore) -> None:
    first, second = core.submit("a", [], {}), core.submit("a", [], {})
    assert first.id and second.id and first.id != second.id
    assert dict(core.queued) == {"a": 2}


def test_submit_with_an_existing_task_id_returns_it_and_queues_nothing(core: BrokerCore, recorder: Recorder) -> None:
    first = core.submit("a", [1], {}, "t1")
    again = core.submit("a", [2], {}, "t1")
    assert again is first and again.args == [1]
    assert dict(core.queued) == {"a": 1}
    assert recorder.at("after_enqueue") == [("t1", QUEUED)]


def test_submit_with_an_empty_method_is_invalid_params(core: BrokerCore, recorder: Recorder) -> None:
    with pytest.raises(InvalidParams):
        core.submit("", [], {}, "t1")
    assert core.store.get("t1") is None
    assert recorder.calls == []


def test_submit_of_a_name_no_connected_node_serves_is_unknown_method(core: BrokerCore) -> None:
    connect(core, b"n1", "a")
    with pytest.raises(UnknownMethod) as raised:
        core.submit("b", [], {}, "t1")
    assert raised.value.code == -32601 and raised.value.data == {"method": "b"}
    assert core.store.get("t1") is None
    assert dict(core.queued) == {}


def test_submit_waits_for_a_node_when_none_is_connected(core: BrokerCore) -> None:
    core.submit("b", [], {}, "t1")
    assert dict(core.queued) == {"b": 1}
    connect(core, b"n1", "b")
    assert assigned(core) == {b"n1": ["t1"]}


def test_submit_of_a_name_served_before_a_node_was_lost_waits_again(core: BrokerCore) -> None:
    connect(core, b"n1", "a")
    core.lose(b"n1", "gone")
    assert core.submit("b", [], {}, "t1").state == QUEUED


def test_submit_with_an_existing_task_id_returns_it_even_for_an_unknown_method(core: BrokerCore) -> None:
    first = core.submit("b", [], {}, "t1")  # no node yet: it waits
    connect(core, b"n1", "a")
    assert core.submit("b", [], {}, "t1") is first
    assert core.submit("c", [], {}, "t1") is first
    assert dict(core.queued) == {"b": 1}


# ---- broker-local tasks ------------------------------------------------------------------------------


def broker_tasks() -> Dispatcher:
    local = Dispatcher()

    @task(name="broker.add", dispatcher=local)
    def add(a: int, b: int) -> int:
        return a + b

    @task(name="broker.fail", dispatcher=local)
    def fail() -> None:
        raise ValueError("no luck")

    return local


def test_broker_task_runs_at_submit_and_is_finished(clock: ManualClock, recorder: Recorder) -> None:
    core = make_core(clock, recorder, local=broker_tasks())
    connect(core, b"n1", "a")  # a node that does not serve it: the broker does
    record = core.submit("broker.add", [2, 3], {}, "t1")
    assert (record.state, record.result, record.error) == (FINISHED, 5, None)
    assert core.find("t1").state == FINISHED
    assert dict(core.queued) == {}
    assert assigned(core) == {}
    assert recorder.at("after_finish") == [("t1", FINISHED)]


def test_broker_task_that_raises_is_failed_with_its_error() -> None:
    core = make_core(local=broker_tasks())
    record = core.submit("broker.fail", [], {}, "t1")
    assert record.state == FAILED and record.result is None
    assert record.error is not None and record.error["code"] == wire.TASK_FAILED
    assert record.error["data"]["type"] == "ValueError" and record.error["data"]["message"] == "no luck"


def test_broker_task_submitted_again_is_not_run_again() -> None:
    calls: list[int] = []
    local = Dispatcher()

    @task(name="broker.count", dispatcher=local)
    def count() -> int:
        calls.append(1)
        return len(calls)

    core = make_core(local=local)
    first = core.submit("broker.count", [], {}, "t1")
    assert core.submit("broker.count", [], {}, "t1") is first
    assert calls == [1] and first.result == 1


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


# ---- report ----------------------------------------------------------------------------------------


def test_finished_outcome_answers_waiters_with_the_result(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    answers: list[TaskRecord] = []
    assert core.wait(core.find("a1"), answers.append) is not None
    assert answers == []
    core.report(node, [done("a1", {"sum": 3})])
    assert [(answer.id, answer.state, answer.result) for answer in answers] == [("a1", FINISHED, {"sum": 3})]
    assert node.held == {} and node.finished == 1
    assert state_of(core, "a1") == FINISHED
    assert recorder.at("after_finish") == [("a1", FINISHED)]


def test_failed_outcome_answers_waiters_with_the_error(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    answers: list[TaskRecord] = []
    core.wait(core.find("a1"), answers.append)
    outcome = failed("a1", type="ValueError")
    core.report(node, [outcome])
    assert len(answers) == 1
    assert answers[0].state == FAILED and answers[0].error == outcome["error"]
    assert recorder.at("retry_delay") == [("a1", wire.TASK_FAILED)]  # Retries declined, so the recorder was asked
    assert recorder.at("after_finish") == [("a1", FAILED)]


def test_outcome_for_an_unknown_task_is_ignored(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core)
    core.report(node, [done("nope"), failed("nope2", retry_in_s=1.0)])
    assert core.store.get("nope") is None and core.store.get("nope2") is None
    assert recorder.at("after_finish") == [] and recorder.at("on_retry") == []


def test_second_outcome_for_a_task_is_ignored(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    answers: list[TaskRecord] = []
    core.wait(core.find("a1"), answers.append)
    core.report(node, [done("a1", 1)])
    core.report(node, [done("a1", 2)])
    core.report(node, [failed("a1")])
    core.report(node, [done("a1", 3), failed("a1")])
    assert len(answers) == 1
    record = core.find("a1")
    assert (record.state, record.result, record.error) == (FINISHED, 1, None)
    assert recorder.at("after_finish") == [("a1", FINISHED)]


def test_invalid_outcome_raises_after_recording_those_before_it(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 3)
    assigned(core)
    with pytest.raises(InvalidParams):
        core.report(node, [done("a1"), {"result": 1}, done("a3")])
    assert state_of(core, "a1") == FINISHED
    assert state_of(core, "a2") == ASSIGNED and state_of(core, "a3") == ASSIGNED
    with pytest.raises(InvalidParams):
        core.report(node, ["a2"])
    with pytest.raises(InvalidParams):
        core.report(node, [{"task_id": 3, "result": 1}])
    assert list(node.held) == ["a2", "a3"]


@pytest.mark.parametrize("error", ["boom", 42, ["x"], False])
def test_error_that_is_not_an_object_becomes_a_task_failed_error(core: BrokerCore, error: Any) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [{"task_id": "a1", "error": error}])
    record = core.find("a1")
    assert record.state == FAILED
    assert record.error is not None and record.error["code"] == -32000 and isinstance(record.error["message"], str)


# ---- retries ---------------------------------------------------------------------------------------


def test_failure_with_retry_in_s_waits_in_retry_then_is_assigned_again(
    core: BrokerCore, clock: ManualClock, recorder: Recorder
) -> None:
    node = connect(core)
    submit(core, 1)
    assert assigned(core) == {b"n1": ["a1"]}
    answers: list[TaskRecord] = []
    core.wait(core.find("a1"), answers.append)
    core.report(node, [failed("a1", retry_in_s=2.0)])
    record = core.find("a1")
    assert (record.state, record.attempts) == (RETRY, 1)
    assert state_of(core, "a1") == RETRY
    assert recorder.at("on_retry") == [("a1", 1, 2.0)]
    assert recorder.at("retry_delay") == []  # Retries answered first
    assert answers == [] and node.held == {}
    assert dict(core.queued) == {}
    clock.advance(1.9)
    assert assigned(core) == {}
    clock.advance(0.1)
    assert dict(core.queued) == {"a": 1}
    ((again_node, records),) = core.assign()
    assert again_node is node and [r.id for r in records] == ["a1"]
    assert records[0].attempts == 1
    assert records[0].to_wire() == {"task_id": "a1", "method": "a", "args": [1], "kwargs": {}, "attempt": 1}
    core.report(node, [done("a1", "ok")])
    assert [(answer.state, answer.result) for answer in answers] == [(FINISHED, "ok")]


def test_retried_task_keeps_its_place_before_later_tasks(core: BrokerCore, clock: ManualClock) -> None:
    node = connect(core, credit=1)
    submit(core, 3)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=0.5)])
    core.grant(node, 1)
    clock.advance(0.5)
    assert assigned(core) == {b"n1": ["a1"]}


def test_failure_without_retry_in_s_is_failed(core: BrokerCore, clock: ManualClock, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retryable=False)])
    assert state_of(core, "a1") == FAILED
    assert recorder.at("on_retry") == [] and clock.pending == 0


@pytest.mark.parametrize("retry_in_s", [-1.0, -0.001, math.nan, math.inf, "2.0", True, False, None, [1]])
def test_failure_with_invalid_retry_in_s_is_failed(core: BrokerCore, clock: ManualClock, retry_in_s: Any) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=retry_in_s)])
    assert state_of(core, "a1") == FAILED
    assert core.find("a1").attempts == 0 and clock.pending == 0


def test_failure_with_data_that_is_not_an_object_is_failed(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [{"task_id": "a1", "error": {"code": -32000, "message": "x", "data": [2.0]}}])
    assert state_of(core, "a1") == FAILED


def test_zero_retry_in_s_is_queued_again_at_once(core: BrokerCore, clock: ManualClock) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=0)])
    assert state_of(core, "a1") == RETRY
    clock.advance(0)
    assert assigned(core) == {b"n1": ["a1"]}


def test_retries_stop_at_max_attempts(clock: ManualClock, recorder: Recorder) -> None:
    core = make_core(clock, recorder, retries=Retries(max_attempts=3))
    node = connect(core)
    submit(core, 1)
    for attempt in range(1, 4):
        assert assigned(core) == {b"n1": ["a1"]}
        core.report(node, [failed("a1", retry_in_s=1.0)])
        assert (state_of(core, "a1"), core.find("a1").attempts) == (RETRY, attempt)
        clock.advance(1.0)
    assert assigned(core) == {b"n1": ["a1"]}
    core.report(node, [failed("a1", retry_in_s=1.0)])
    assert state_of(core, "a1") == FAILED
    assert [call[1] for call in recorder.at("on_retry")] == [1, 2, 3]


def test_default_retry_cap_is_one_hundred_attempts(core: BrokerCore, clock: ManualClock) -> None:
    node = connect(core, credit=1000)
    submit(core, 1)
    for _ in range(100):
        assigned(core)
        core.report(node, [failed("a1", retry_in_s=0.0)])
        clock.advance(0)
    assert core.find("a1").attempts == 100
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=0.0)])
    assert state_of(core, "a1") == FAILED


def test_retry_delay_is_capped_at_max_delay_s(clock: ManualClock, recorder: Recorder) -> None:
    core = make_core(clock, recorder, retries=Retries(max_delay_s=5.0))
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=1e9)])
    assert recorder.at("on_retry") == [("a1", 1, 5.0)]
    clock.advance(4.99)
    assert assigned(core) == {}
    clock.advance(0.01)
    assert assigned(core) == {b"n1": ["a1"]}


def test_task_revoked_in_retry_is_not_queued_again(core: BrokerCore, clock: ManualClock) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=1.0)])
    assert core.revoke("a1") == (REVOKED, None)
    clock.advance(5.0)
    assert state_of(core, "a1") == REVOKED
    assert dict(core.queued) == {} and assigned(core) == {}


def test_failure_reported_twice_counts_one_attempt(core: BrokerCore, clock: ManualClock, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [failed("a1", retry_in_s=1.0)])
    core.report(node, [failed("a1", retry_in_s=1.0)])  # the node sends its report again (a lost reply)
    assert core.find("a1").attempts == 1
    assert recorder.at("on_retry") == [("a1", 1, 1.0)]
    assert clock.pending == 1


def test_result_then_failure_in_one_report_does_not_retry(core: BrokerCore, recorder: Recorder) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [done("a1", 1), failed("a1", retry_in_s=1.0)])
    assert state_of(core, "a1") == FINISHED
    assert recorder.at("on_retry") == []
    assert core.find("a1").attempts == 0


def test_earlier_retry_timer_does_not_cut_a_later_delay_short(core: BrokerCore, clock: ManualClock) -> None:
    connect(core)
    submit(core, 1)
    assigned(core)
    core.report(core.node(b"n1"), [failed("a1", retry_in_s=1.0)])  # attempt 1, due at t=1
    node = connect(core, b"n1", running=["a1"])  # the node connects again, saying it runs a1
    core.report(node, [failed("a1", retry_in_s=60.0)])  # attempt 2, due at t=61
    clock.advance(1.5)
    assert state_of(core, "a1") == RETRY
    assert dict(core.queued) == {}


# ---- revoke ----------------------------------------------------------------------------------------


def test_revoke_queued_task_is_never_assigned(core: BrokerCore, recorder: Recorder) -> None:
    submit(core, 2)
    assert core.revoke("a1") == (REVOKED, None)
    assert dict(core.queued) == {"a": 1}
    connect(core)
    assert assigned(core) == {b"n1": ["a2"]}
    assert state_of(core, "a1") == REVOKED
    assert recorder.at("after_finish") == [("a1", REVOKED)]


def test_revoke_held_task_names_its_node_and_ignores_its_later_outcome(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.started(node, ["a1"])
    assert core.revoke("a1") == (REVOKED, b"n1")
    assert node.held == {} and node.started == set()
    core.report(node, [done("a1", "late")])
    core.report(node, [failed("a1", retry_in_s=1.0)])
    record = core.find("a1")
    assert (record.state, record.result, record.attempts) == (REVOKED, None, 0)


def test_revoke_of_a_finished_task_returns_its_final_state(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 2)
    assigned(core)
    core.report(node, [done("a1"), failed("a2")])
    assert core.revoke("a1") == (FINISHED, None)
    assert core.revoke("a2") == (FAILED, None)
    assert core.revoke("a2") == (FAILED, None)
    assert state_of(core, "a1") == FINISHED


def test_revoke_of_an_unknown_task_raises_unknown_task(core: BrokerCore) -> None:
    with pytest.raises(UnknownTask) as raised:
        core.revoke("nope")
    assert raised.value.code == wire.UNKNOWN_TASK


def test_waiters_of_a_revoked_task_get_the_revoked_error(core: BrokerCore) -> None:
    submit(core, 1)
    answers: list[TaskRecord] = []
    core.wait(core.find("a1"), answers.append)
    core.revoke("a1")
    assert len(answers) == 1 and answers[0].state == REVOKED
    assert answers[0].error is not None and answers[0].error["code"] == wire.REVOKED_CODE == -32004


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


# ---- wait --------------------------------------------------------------------------------------------


def test_wait_on_a_finished_task_calls_back_at_once(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [done("a1", 7)])
    answers: list[TaskRecord] = []
    assert core.wait(core.find("a1"), answers.append) is None
    assert [answer.result for answer in answers] == [7]


def test_cancelled_wait_is_never_called(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    kept: list[TaskRecord] = []
    cancelled: list[TaskRecord] = []
    token = core.wait(core.find("a1"), cancelled.append)
    core.wait(core.find("a1"), kept.append)
    assert token is not None
    core.cancel_wait("a1", token)
    core.cancel_wait("a1", token)  # twice is harmless
    core.cancel_wait("nope", 12345)
    core.report(node, [done("a1")])
    assert cancelled == [] and len(kept) == 1


def test_every_waiter_is_called_once(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    answers: list[list[TaskRecord]] = [[] for _ in range(20)]
    tokens = [core.wait(core.find("a1"), answered.append) for answered in answers]
    assert len(set(tokens)) == 20
    core.report(node, [done("a1")])
    core.report(node, [done("a1")])
    assert [len(answered) for answered in answers] == [1] * 20


# ---- time limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, math.nan, math.inf, "10", True, 7 * 86400.0 + 1])
def test_invalid_time_limit_is_refused_at_submit(core: BrokerCore, recorder: Recorder, limit: Any) -> None:
    connect(core)
    with pytest.raises(InvalidParams):
        core.submit("a", [], {}, "t1", {"time_limit_s": limit})
    assert core.store.get("t1") is None
    assert dict(core.queued) == {}
    assert recorder.at("after_enqueue") == []


def test_valid_time_limit_travels_to_the_node(core: BrokerCore) -> None:
    connect(core)
    core.submit("a", [1], {}, "t1", {"time_limit_s": 30})
    core.submit("a", [], {}, "t2", {"time_limit_s": 7 * 86400.0})
    handed = core.assign()
    wires = [record.to_wire() for _, records in handed for record in records]
    assert wires[0] == {"task_id": "t1", "method": "a", "args": [1], "kwargs": {}, "attempt": 0, "time_limit_s": 30}
    assert wires[1]["time_limit_s"] == 7 * 86400.0


# ---- expire ------------------------------------------------------------------------------------------


def test_expire_forgets_old_outcomes_only(clock: ManualClock, recorder: Recorder) -> None:
    core = make_core(clock, recorder, result_ttl_s=60.0)
    node = connect(core, credit=2)
    submit(core, 4)
    assigned(core)  # a1, a2 held; a3, a4 queued
    core.report(node, [done("a1"), failed("a2")])
    core.revoke("a3")
    assert core.expire(now=time.time() + 30) == 0
    assert state_of(core, "a1") == FINISHED
    assert core.expire(now=time.time() + 61) == 3
    for task_id in ("a1", "a2", "a3"):
        with pytest.raises(UnknownTask):
            core.find(task_id)
    assert state_of(core, "a4") == QUEUED and dict(core.queued) == {"a": 1}


def test_expire_never_touches_unfinished_tasks(clock: ManualClock) -> None:
    core = make_core(clock, result_ttl_s=1.0)
    node = connect(core, credit=1)
    submit(core, 3)
    assigned(core)
    core.grant(node, 1)
    assigned(core)
    core.report(node, [failed("a2", retry_in_s=5.0)])
    assert core.expire(now=time.time() + 1e6) == 0
    assert [state_of(core, task_id) for task_id in ("a1", "a2", "a3")] == [ASSIGNED, RETRY, QUEUED]


def test_expire_without_result_ttl_keeps_everything(core: BrokerCore) -> None:
    node = connect(core)
    submit(core, 1)
    assigned(core)
    core.report(node, [done("a1")])
    assert core.expire(now=time.time() + 1e9) == 0
    assert state_of(core, "a1") == FINISHED


# ---- hooks, end to end -------------------------------------------------------------------------------


def test_hooks_see_a_task_life_in_order(core: BrokerCore, clock: ManualClock, recorder: Recorder) -> None:
    node = connect(core)
    core.submit("a", [], {}, "t1")
    assigned(core)
    core.report(node, [failed("t1", retry_in_s=1.0)])
    clock.advance(1.0)
    assigned(core)
    core.report(node, [done("t1")])
    core.lose(b"n1", "disconnected")
    assert recorder.calls == [
        ("on_node_added", b"n1"),
        ("before_enqueue", "t1"),
        ("after_enqueue", "t1", QUEUED),
        ("before_assign", b"n1", ["t1"]),
        ("on_retry", "t1", 1, 1.0),
        ("before_assign", b"n1", ["t1"]),
        ("after_finish", "t1", FINISHED),
        ("on_node_lost", b"n1", [], "disconnected"),
    ]


# ---- invariants under random operations -------------------------------------------------------------


def check_invariants(core: BrokerCore, task_ids: list[str]) -> None:
    """The queued counts match the store, task by task; each task is in exactly one place: held by
    one node (ASSIGNED in the store), or not held and in a state that is not ASSIGNED."""
    assert dict(core.queued) == brute_queued(core, task_ids)
    holders: dict[str, list[NodeSlot]] = {}
    for node in core.nodes:
        assert node.credit >= 0
        assert node.started <= node.held.keys()
        for task_id in node.held:
            holders.setdefault(task_id, []).append(node)
    for task_id in task_ids:
        record = core.store.get(task_id)
        assert record is not None, task_id
        held_by = holders.get(task_id, [])
        assert len(held_by) <= 1, (task_id, [node.id for node in held_by])
        if held_by:
            assert record.state == ASSIGNED, (task_id, record.state)
            assert core.find(task_id) is held_by[0].held[task_id]
            assert core.state(record) == (RUNNING if task_id in held_by[0].started else ASSIGNED)
        else:
            assert record.state in (QUEUED, RETRY, *FINAL_STATES), (task_id, record.state)
            assert core.state(record) == record.state


def test_counts_and_holders_stay_consistent_under_random_operations(clock: ManualClock) -> None:
    rng = random.Random(20240611)
    core = make_core(clock, retries=Retries(max_attempts=3))
    methods = ["a", "b", "c"]
    node_ids: list[NodeId] = [b"n1", b"n2", b"n3", b"n4"]
    task_ids: list[str] = []

    def some_node() -> NodeSlot | None:
        nodes = list(core.nodes)
        return rng.choice(nodes) if nodes else None

    def some_held(node: NodeSlot, most: int) -> list[str]:
        return rng.sample(sorted(node.held), min(len(node.held), rng.randint(0, most)))

    for _ in range(4000):
        op = rng.choice(
            ["submit", "submit", "submit", "connect", "grant", "grant", "assign", "assign", "report", "report"]
            + ["release", "lose", "revoke", "started", "advance", "advance"]
        )
        node = some_node()
        if op == "submit":
            task_id = rng.choice(task_ids) if task_ids and rng.random() < 0.1 else f"t{len(task_ids)}"
            try:
                record = core.submit(rng.choice([*methods, "d"]), [], {}, task_id)
            except UnknownMethod:
                continue
            if record.id not in task_ids:
                task_ids.append(record.id)
        elif op == "connect":
            served = rng.sample(methods, rng.randint(1, len(methods)))
            running = rng.sample(task_ids, min(len(task_ids), rng.randint(0, 3)))
            core.connect(rng.choice(node_ids), served, rng.randint(0, 4), running)
        elif op == "grant" and node is not None:
            core.grant(node, rng.randint(-1, 3))
        elif op == "assign":
            core.assign()
        elif op == "report" and node is not None:
            chosen = some_held(node, 3)
            if task_ids and rng.random() < 0.2:
                chosen.append(rng.choice(task_ids))  # a stale or foreign outcome
            outcomes = []
            for task_id in chosen:
                kind = rng.choice(["done", "failed", "retry", "retry"])
                if kind == "done":
                    outcomes.append(done(task_id, 1))
                elif kind == "failed":
                    outcomes.append(failed(task_id))
                else:
                    outcomes.append(failed(task_id, retry_in_s=rng.choice([0.0, 0.5, 2.0])))
            core.report(node, outcomes)
        elif op == "release" and node is not None:
            core.release(node, some_held(node, 2), draining=rng.random() < 0.05)
        elif op == "lose":
            core.lose(rng.choice(node_ids), "random")
        elif op == "revoke" and task_ids:
            core.revoke(rng.choice(task_ids))
        elif op == "started" and node is not None:
            core.started(node, some_held(node, 2))
        elif op == "advance":
            clock.advance(rng.choice([0.0, 0.3, 1.0]))
        check_invariants(core, task_ids)

    assert len(task_ids) > 300
    states = Counter(core.store.get(task_id).state for task_id in task_ids)  # type: ignore[union-attr]
    assert states[FINISHED] and states[FAILED] and states[REVOKED]  # the sequence reached every ending

    # Drain: every task not held and not final is handed out exactly once.
    clock.advance(1000.0)
    queued = {task_id for task_id in task_ids if core.store.get(task_id).state == QUEUED}  # type: ignore[union-attr]
    assert len(queued) == sum(core.queued.values())
    connect(core, b"drain", *methods, "d", credit=10_000)
    handed = [record.id for _, records in core.assign() for record in records]
    assert len(handed) == len(set(handed)) and set(handed) == queued
    assert dict(core.queued) == {}
    check_invariants(core, task_ids)
