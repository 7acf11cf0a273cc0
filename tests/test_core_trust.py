"""The core as an attacker or a failing disk would test it: who may end a task, what a reconnecting node
may take, and what happens to a task when the store fails while its outcome is recorded."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.core_helpers import Recorder, assigned, connect, done, failed, state_of, submit

# The fixtures, imported by name for the tests that ask for them.
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries, TimeLimits
from zerotask.store import MemoryStore, Outcome
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FINISHED, QUEUED, RETRY


def test_only_the_node_holding_a_task_may_end_it(core: BrokerCore) -> None:
    holder = connect(core, b"n1", credit=1)
    other = connect(core, b"n2", credit=0)
    submit(core, 2)
    assert assigned(core) == {b"n1": ["a1"]}
    core.report(other, [done("a1", "forged"), done("a2", "forged")])  # held by n1; queued, held by nobody
    core.report(None, [done("a1", "forged")])  # a peer that is not a node at all
    assert state_of(core, "a1") == ASSIGNED and state_of(core, "a2") == QUEUED
    core.report(holder, [done("a1", 1)])
    assert core.find("a1").result == 1


def test_a_late_outcome_from_a_lost_node_is_ignored_and_the_task_runs_again(core: BrokerCore) -> None:
    first = connect(core, b"n1", credit=1)
    submit(core, 1)
    assigned(core)
    core.lose(b"n1", "silent")
    core.report(first, [done("a1", "late")])
    assert state_of(core, "a1") == QUEUED
    second = connect(core, b"n2", credit=1)
    assert assigned(core) == {b"n2": ["a1"]}
    core.report(second, [done("a1", "again")])
    assert core.find("a1").result == "again"


def test_a_reconnecting_node_may_keep_only_tasks_of_names_it_serves(core: BrokerCore) -> None:
    submit(core, 1, "a")
    submit(core, 1, "secret")
    connect(core, b"n1", "a", credit=0, running=["a1", "secret1"])
    assert state_of(core, "a1") == "RUNNING"
    assert state_of(core, "secret1") == QUEUED


class FailingStore(MemoryStore):
    """A store whose writes of outcomes fail, as a full disk would."""

    failing = False

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if self.failing:
            raise OSError("disk full")
        return super().finish_many(outcomes)

    def retry(self, task_id: str, attempts: int) -> None:
        if self.failing:
            raise OSError("disk full")
        super().retry(task_id, attempts)


@pytest.mark.parametrize(
    "outcome", [done("a1", 3), failed("a1"), failed("a1", retry_in_s=1.0)], ids=["finished", "failed", "retry"]
)
def test_a_store_failure_while_recording_leaves_the_task_with_its_node(clock: ManualClock, outcome: dict[str, object]) -> None:
    """Recording an outcome is atomic: if the store raises, the task is still held by its node (and goes
    back to the queue if the node is lost), never neither queued, held nor finished."""
    store = FailingStore()
    core = BrokerCore(store, clock, [Retries(), TimeLimits(), Recorder()])
    node = connect(core, b"n1", credit=1)
    submit(core, 1)
    assigned(core)
    store.failing = True
    with pytest.raises(OSError):
        core.report(node, [outcome])
    assert state_of(core, "a1") == ASSIGNED and "a1" in node.held
    store.failing = False
    core.report(node, [outcome])  # the node reports again (or is lost, and the task is queued again)
    assert state_of(core, "a1") in {FINISHED, "FAILED", RETRY}
    assert "a1" not in node.held
