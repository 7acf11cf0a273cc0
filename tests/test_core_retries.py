"""BrokerCore retries: a failure that asks for a retry waits in RETRY, then is queued again in its old place;
the cap on attempts and on the delay; a report sent twice counts one attempt, and each attempt has its own
timer. The shared helpers and fixtures are in tests/core_helpers.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.core_helpers import Recorder, assigned, connect, done, failed, make_core, state_of, submit

# pytest finds fixtures by name in the test module: each is imported as itself (core needs clock and recorder).
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries
from zerotask.store import TaskRecord
from zerotask.testing import ManualClock
from zerotask.wire import FAILED, FINISHED, RETRY, REVOKED

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
