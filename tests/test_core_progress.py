"""The broker's side of report_progress, in-process: only the node that holds a task may report for it,
what it says is bounded, and the report is forgotten when the task ends or its node goes."""

from __future__ import annotations

from typing import Any

from tests.core_helpers import assigned, connect, done, submit
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.events import EventPublisher
from zerotask.broker.progress import MAX_INFO_BYTES, Progress


def test_the_holder_reports_and_callers_see_the_latest(core: BrokerCore) -> None:
    progress = Progress()
    node = connect(core, b"n1", "a")
    other = connect(core, b"n2", "b")
    submit(core, 1)
    assigned(core)
    assert progress.report(node, [{"task_id": "a1", "done": 1, "total": 10, "info": {"stage": "read"}}]) == 1
    assert progress.report(node, [{"task_id": "a1", "done": 5, "total": 10}]) == 1
    assert progress.get("a1") == {"done": 5, "total": 10, "info": None}
    assert progress.report(other, [{"task_id": "a1", "done": 9}]) == 0  # not its task
    assert progress.get("a1") == {"done": 5, "total": 10, "info": None}


def test_what_is_not_progress_is_ignored(core: BrokerCore) -> None:
    progress = Progress()
    node = connect(core, b"n1", "a")
    submit(core, 1)
    assigned(core)
    bad: list[Any] = [
        "a1",
        {"task_id": "a1"},
        {"task_id": "a1", "done": "half"},
        {"task_id": "a1", "done": True},
        {"task_id": "a1", "done": float("nan")},
        {"task_id": "a1", "done": 1, "total": "ten"},
        {"task_id": "a1", "done": 1, "info": "x" * (MAX_INFO_BYTES + 1)},
        {"task_id": 7, "done": 1},
    ]
    assert progress.report(node, bad) == 0
    assert progress.get("a1") is None


def test_a_report_is_forgotten_when_the_task_ends_or_its_node_goes(core: BrokerCore) -> None:
    progress = Progress()
    node = connect(core, b"n1", "a")
    submit(core, 2)
    assigned(core)
    progress.report(node, [{"task_id": "a1", "done": 1}, {"task_id": "a2", "done": 1}])
    core.report(node, [done("a1")])
    progress.after_finish(core.find("a1"))
    assert progress.get("a1") is None
    lost = core.lose(b"n1", "silent")
    assert lost is not None
    progress.on_node_lost(lost, [core.find("a2")], "silent")
    assert progress.get("a2") is None


def test_a_report_is_published_as_an_event(core: BrokerCore) -> None:
    events = EventPublisher()
    events.subscription(b"\x01")
    progress = Progress(events)
    node = connect(core, b"n1", "a")
    submit(core, 1)
    assigned(core)
    progress.report(node, [{"task_id": "a1", "done": 2, "total": 4}])
    (event,) = events.take()
    assert b'"zerotask.event.progress"' in event and b'"done":2' in event
