"""The shared pieces of the BrokerCore tests (tests/test_core_*.py): the core runs in-process, as dramatiq's
StubBroker or huey's MemoryHuey, on a MemoryStore with a manual clock: no sockets, no processes, no sleeps.

Every core here carries ``Recorder``, a hook that writes down each call it gets, so the tests also check that
the hooks are called at the points zerotask.broker.hooks documents. The fixtures ``clock``, ``recorder`` and
``core`` live here too; a test module imports all three by name (``core`` asks for the other two).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from zerotask import wire
from zerotask.broker.assignment import NodeId, NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Hooks, Retries, TimeLimits
from zerotask.store import MemoryStore, TaskRecord, Want
from zerotask.task import Dispatcher
from zerotask.testing import ManualClock
from zerotask.wire import QUEUED

# ---- helpers ---------------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """A MemoryStore that counts its takes (``takes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.takes = 0

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        self.takes += 1
        return super().take_many(wants)


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
