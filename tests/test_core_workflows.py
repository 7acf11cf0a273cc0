"""Workflows in the broker's core, in-process: the Workflows hook on a MemoryStore with a manual clock, members
driven to their end by a node's reports (``core.report``), as the transport would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.core_helpers import Recorder, connect, done, failed
from zerotask import task, wire
from zerotask.broker.assignment import NodeId, NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries, TimeLimits
from zerotask.broker.placement import DueTimer
from zerotask.broker.workflows import RETRY_S, WAITING_FOREVER, Workflows, shown_state
from zerotask.canvas import Canvas, chain, chord, group, sig
from zerotask.exceptions import InvalidParams, QueueFull, UnknownMethod
from zerotask.store import MemoryStore, Outcome, Store, TaskRecord
from zerotask.store.sqlite import SqliteStore
from zerotask.task import Dispatcher
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED, REVOKED, RUNNING, SCHEDULED

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "tsum": lambda values: sum(values),
    "slow": lambda *args: 0,
}
METHODS = tuple(FUNCTIONS) + ("fail",)


class Cluster:
    """A core with the Workflows hook, a node serving METHODS, and a record of what nodes were told to stop."""

    def __init__(self, store: Store | None = None, local: Dispatcher | None = None, max_message_bytes: int = 1 << 24) -> None:
        self.clock = ManualClock()
        self.store = store or MemoryStore()
        self.workflows = Workflows(max_message_bytes)
        self.core = BrokerCore(self.store, self.clock, [Retries(), TimeLimits(), Recorder(), self.workflows], local=local)
        self.stopped: list[tuple[NodeId, list[str]]] = []
        self.workflows.attach(self.core, self.clock, lambda node, task_ids: self.stopped.append((node, task_ids)))
        self.node: NodeSlot = connect(self.core, b"n1", *METHODS, credit=1000)
        self.ran: list[str] = []

    def start(self, workflow: Canvas, workflow_id: str = "wf") -> TaskRecord:
        return self.workflows.create(workflow.to_json(), workflow_id, None)

    def run(self, rounds: int = 50, hold: Callable[[TaskRecord], bool] = lambda record: False) -> None:
        """Hand out and run what is queued, reporting every outcome in reverse order, for ``rounds`` rounds;
        a task ``hold`` says yes to is left running."""
        for _ in range(rounds):
            records = [record for _, handed in self.core.assign() for record in handed]
            outcomes = []
            for record in [*records, *[r for r in self.node.held.values() if r not in records and not hold(r)]]:
                if hold(record) or record.id in [outcome["task_id"] for outcome in outcomes]:
                    continue
                self.ran.append(record.id)
                if record.method == "fail":
                    outcomes.append(failed(record.id))
                else:
                    outcomes.append(done(record.id, FUNCTIONS[record.method](*record.args, **record.kwargs)))
            if not outcomes:
                return
            self.core.report(self.node, list(reversed(outcomes)))

    def outcome(self, workflow_id: str = "wf") -> TaskRecord:
        record = self.store.get(workflow_id)
        assert record is not None
        return record


def test_a_chain_runs_stage_after_stage_and_ends_its_record() -> None:
    cluster = Cluster()
    record = cluster.start(chain(sig("add", 1, 2), sig("mul", 10)))
    assert record.state == SCHEDULED and record.due_at == WAITING_FOREVER
    assert shown_state(record, cluster.core.state(record)) == RUNNING
    answers: list[Any] = []
    cluster.core.wait(record, lambda ended: answers.append(ended.result))
    assert cluster.store.get("wf.1") is None  # not before its input is ready
    cluster.run()
    assert answers == [30] and cluster.outcome().state == FINISHED
    assert cluster.ran == ["wf.0", "wf.1"]
    member = cluster.store.get("wf.1")
    assert member is not None and member.options["workflow"] == {"id": "wf", "path": "1"}


def test_a_group_gives_its_results_in_order() -> None:
    cluster = Cluster()
    cluster.start(group(sig("add", n, n) for n in range(10)))
    cluster.run()
    assert cluster.outcome().result == [2 * n for n in range(10)]


def test_a_chord_callback_is_queued_once_however_often_the_workflow_is_looked_at() -> None:
    cluster = Cluster()
    cluster.start(chord(group(sig("add", 1, 1), sig("add", 2, 2)), sig("tsum")))
    cluster.run(hold=lambda record: record.id == "wf.cb")
    callback = cluster.store.get("wf.cb")
    assert callback is not None and callback.args == [[2, 4]] and callback.state == ASSIGNED
    for _ in range(3):  # as a broker that starts does: what is due is queued already
        cluster.workflows.resume_all()
        cluster.clock.advance(0)
    cluster.run()
    assert cluster.outcome().result == 6
    assert cluster.ran.count("wf.cb") == 1


def test_a_failing_member_fails_the_workflow_and_its_other_members_never_start() -> None:
    cluster = Cluster()
    cluster.node.credit = 2  # the node takes the first two members only
    cluster.start(chain(group(sig("slow"), sig("fail"), sig("slow"), sig("slow")), sig("tsum")))
    cluster.run(rounds=1, hold=lambda record: record.id == "wf.0.0")
    record = cluster.outcome()
    assert record.state == FAILED and record.error == failed("x")["error"]
    assert [cluster.core.find(f"wf.0.{n}").state for n in (0, 2, 3)] == [REVOKED] * 3
    assert cluster.stopped == [(b"n1", ["wf.0.0"])]  # the running one is stopped; the queued ones never run
    assert cluster.store.get("wf.1") is None
    cluster.node.credit = 100
    cluster.run()
    assert sorted(cluster.ran) == ["wf.0.1"]


def test_revoking_a_workflow_revokes_its_members() -> None:
    cluster = Cluster()
    cluster.start(group(sig("slow"), sig("slow")))
    assert cluster.core.revoke("wf") == (REVOKED, None)
    assert [cluster.core.find(f"wf.{n}").state for n in (0, 1)] == [REVOKED, REVOKED]
    cluster.run()
    assert cluster.ran == []


def test_a_member_revoked_alone_fails_its_workflow() -> None:
    cluster = Cluster()
    cluster.start(chain(sig("slow"), sig("slow")))
    cluster.core.revoke("wf.0")
    assert cluster.outcome().state == FAILED and cluster.outcome().error["code"] == wire.REVOKED_CODE  # type: ignore[index]


def test_starting_a_workflow_twice_starts_it_once() -> None:
    cluster = Cluster()
    first = cluster.start(group(sig("add", 1, 1)))
    again = cluster.start(group(sig("add", 5, 5)))
    assert again.id == first.id == "wf"
    cluster.run()
    assert cluster.outcome().result == [2] and cluster.ran == ["wf.0"]


def test_what_is_refused_at_the_start() -> None:
    cluster = Cluster()
    with pytest.raises(UnknownMethod):  # a node is connected and none serves it
        cluster.start(chain(sig("add", 1, 2), sig("nope")))
    with pytest.raises(InvalidParams):
        cluster.workflows.create({"chain": []}, "wf", None)
    with pytest.raises(InvalidParams, match="no '.'"):
        cluster.start(group(sig("add", 1, 1)), "wf.0")
    connect(cluster.core, b"liar", wire.WORKFLOW_TASK)  # a node may say it serves the name: it is still reserved
    with pytest.raises(InvalidParams, match="reserved"):
        cluster.core.submit(wire.WORKFLOW_TASK, [], {}, "sneaky")
    assert cluster.store.get("wf") is None and cluster.store.get("sneaky") is None


def test_a_member_id_taken_by_another_task_fails_the_workflow() -> None:
    cluster = Cluster()
    cluster.core.submit("mul", [1, 1], {}, "wf.1")
    cluster.start(chain(sig("add", 1, 2), sig("add", 10)))
    cluster.run()
    record = cluster.outcome()
    assert record.state == FAILED and record.error is not None and record.error["data"]["type"] == "WorkflowError"


def test_a_broker_that_starts_queues_what_the_one_before_it_did_not() -> None:
    """As with Redis, where an outcome is written at once: the member ended, the next stage was never queued."""
    store = MemoryStore()
    cluster = Cluster(store)
    cluster.start(chain(sig("add", 1, 2), sig("mul", 10), sig("add", 1)))
    store.finish_many([Outcome("wf.0", FINISHED, result=3)])  # recorded; then the broker died
    restarted = Cluster(store)
    restarted.workflows.resume_all()
    restarted.clock.advance(0)
    follow = store.get("wf.1")
    assert follow is not None and follow.args == [3, 10] and follow.state in (QUEUED, ASSIGNED)  # (ASSIGNED: to the free node)
    restarted.run()
    assert restarted.outcome().result == 31


def test_unfinished_workflows_are_looked_at_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("zerotask.broker.workflows.RESUME_SLICE", 3)
    store = MemoryStore()
    cluster = Cluster(store)
    for n in range(10):
        cluster.start(chain(sig("add", n, 1), sig("mul", 2)), f"wf{n}")
        store.finish_many([Outcome(f"wf{n}.0", FINISHED, result=n + 1)])
    restarted = Cluster(store)
    restarted.workflows.resume_all()
    restarted.clock.advance(0)
    assert sum(store.get(f"wf{n}.1") is not None for n in range(10)) == 10
    restarted.run()
    assert [restarted.outcome(f"wf{n}").result for n in range(10)] == [2 * (n + 1) for n in range(10)]


def test_a_full_queue_delays_a_stage_and_does_not_fail_it() -> None:
    cluster = Cluster()
    cluster.start(chain(sig("add", 1, 2), sig("mul", 10)))
    cluster.core.max_queued = 0  # no room for the next stage
    cluster.run()
    assert cluster.store.get("wf.1") is None and cluster.outcome().state == SCHEDULED
    cluster.core.max_queued = 100
    cluster.clock.advance(RETRY_S)
    cluster.run()
    assert cluster.outcome().result == 30


def test_a_chain_of_broker_tasks_is_a_loop_not_a_recursion() -> None:
    local = Dispatcher()

    @task(name="broker.inc", dispatcher=local)
    def inc(value: int) -> int:
        return value + 1

    cluster = Cluster(local=local)
    cluster.start(chain(sig("broker.inc", 0), *[sig("broker.inc")] * 1999))
    assert cluster.outcome().result == 2000


def test_arguments_that_would_not_fit_in_a_message_fail_the_workflow() -> None:
    cluster = Cluster(max_message_bytes=4096 + 100)
    cluster.start(chord(group(sig("add", "x" * 60, "y") for _ in range(3)), sig("tsum")))
    cluster.run()
    error = cluster.outcome().error
    assert error is not None and "would not fit" in error["data"]["message"]


def test_an_operator_cannot_retry_a_workflow() -> None:
    cluster = Cluster()
    cluster.start(chain(sig("fail")))
    cluster.run()
    assert cluster.store.reset("wf")
    cluster.core.enqueued(cluster.outcome())
    assert cluster.outcome().state == FAILED and "cannot be retried" in cluster.outcome().error["message"]  # type: ignore[index]


def test_the_due_timer_never_arms_for_a_workflow() -> None:
    cluster = Cluster()
    cluster.start(group(sig("slow")))
    timer = DueTimer(cluster.store, cluster.clock)
    timer.arm(None)
    timer.arm(WAITING_FOREVER)
    timer.arm(float("inf"))
    assert cluster.clock.pending == 0


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_workflow_that_ends_as_it_starts_is_answered_with_its_outcome(store: str, tmp_path: Path) -> None:
    local = Dispatcher()

    @task(name="broker.double", dispatcher=local)
    def double(value: int) -> int:
        return 2 * value

    cluster = Cluster(MemoryStore() if store == "memory" else SqliteStore(str(tmp_path / "tasks.db")), local=local)
    record = cluster.start(group(sig("broker.double", 1), sig("broker.double", 2)))
    assert record.state == FINISHED and record.result == [2, 4]


def test_a_unique_member_whose_twin_runs_fails_the_workflow() -> None:
    cluster = Cluster()
    cluster.core.defaults.announce({"add": {"unique_for": 60}})
    cluster.core.submit("add", [1, 1], {}, "twin")
    cluster.start(group(sig("add", 1, 1)))
    error = cluster.outcome().error
    assert error is not None and "twin" in error["data"]["message"]


def test_workflows_started_in_one_round_queue_a_bounded_number_of_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("zerotask.broker.workflows.ROUND_TASKS", 15)
    cluster = Cluster()
    cluster.start(group(sig("add", n, n) for n in range(10)), "first")  # the first of a round always starts
    with pytest.raises(QueueFull):
        cluster.start(group(sig("add", n, n) for n in range(10)), "second")
    cluster.core.commit()  # the round ends
    cluster.start(group(sig("add", n, n) for n in range(10)), "second")
