"""BrokerCore and one task's life: submit, broker-local tasks, reported outcomes, revoke, waits, time limits
and the expiry of old outcomes. The shared helpers and fixtures are in tests/core_helpers.py.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from tests.core_helpers import Recorder, assigned, connect, done, failed, make_core, state_of, submit

# pytest finds fixtures by name in the test module: each is imported as itself (core needs clock and recorder).
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask import wire
from zerotask.broker.core import BrokerCore
from zerotask.exceptions import InvalidParams, UnknownMethod, UnknownTask
from zerotask.store import TaskRecord
from zerotask.task import Dispatcher, task
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED, RETRY, REVOKED

# ---- submit ----------------------------------------------------------------------------------------


def test_submit_queues_the_task(core: BrokerCore, recorder: Recorder) -> None:
    record = core.submit("a", [1, 2], {"x": 3}, "t1")
    submit(core, 2, "b")
    assert (record.id, record.state, record.args, record.kwargs) == ("t1", QUEUED, [1, 2], {"x": 3})
    found = core.find("t1")
    assert (found.id, found.method, found.args, found.kwargs) == ("t1", "a", [1, 2], {"x": 3})
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
    assert (again.id, again.method, again.args) == (first.id, "a", [1])
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
    assert (core.submit("b", [], {}, "t1").id, core.submit("c", [], {}, "t1").method) == (first.id, "b")
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
    again = core.submit("broker.count", [], {}, "t1")
    assert (again.id, again.state, again.result) == (first.id, "FINISHED", 1)
    assert calls == [1] and first.result == 1


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
