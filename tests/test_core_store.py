"""BrokerCore and its store: names remembered across a deploy, and a store that cannot be reached.

An unreachable store is played by ``OutageStore``, a MemoryStore whose writes raise StoreUnavailable
while ``down`` is set, as a RedisStore's do while Redis is away (the Redis tests do it for real).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import pytest

from tests.core_helpers import Recorder, assigned, connect, done, submit
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries, TimeLimits
from zerotask.broker.params import read_task_call
from zerotask.broker.replies import Outbox
from zerotask.exceptions import StoreUnavailable, UnknownMethod
from zerotask.store import NO_ENTRIES, MemoryStore, Outcome, TaskRecord, Want
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED


class OutageStore(MemoryStore):
    """A MemoryStore that fails every write, and flush, while ``down``; adds are deferred to flush."""

    holds_at_add = False  # (its adds wait for flush)

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self._buffered: list[TaskRecord] = []

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the store is down")

    def add(self, record: TaskRecord, size_hint: int = 0) -> bool:
        self._buffered.append(record)  # written at flush, as a network store does
        return True

    def flush(self) -> list[TaskRecord]:
        self._check()
        add = super().add  # (a comprehension cannot call super() itself)
        refused = [record for record in self._buffered if not add(record)]
        self._buffered.clear()
        return refused

    def heartbeat(self) -> None:
        self._check()

    def take_many(self, wants: Sequence[Want]) -> list[list[TaskRecord]]:
        self.flush()  # read your writes
        return super().take_many(wants)

    def queued_counts(self) -> Mapping[str, int]:
        counts = Counter(super().queued_counts())
        counts.update(record.method for record in self._buffered)
        return counts

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        self._check()
        return super().finish_many(outcomes)

    def requeue(self, task_ids: Iterable[str]) -> None:
        self._check()
        super().requeue(task_ids)


@pytest.fixture
def outage(clock: ManualClock, recorder: Recorder) -> tuple[BrokerCore, OutageStore]:
    store = OutageStore()
    core = BrokerCore(store, clock, [Retries(), TimeLimits(), recorder])
    core.writes.probe_every_s = 0.0  # every commit tries the store (a broker waits PROBE_EVERY_S between tries)
    return core, store


# ---- a deploy ----------------------------------------------------------------------------------------


def test_tasks_of_a_name_once_served_wait_while_its_node_restarts(core: BrokerCore) -> None:
    connect(core, b"old", "add")
    connect(core, b"other", "mul")
    core.lose(b"old", "deploy")
    record = core.submit("add", [1, 2], {}, "during-deploy")
    assert record.state == QUEUED
    connect(core, b"new", "add")
    assert assigned(core) == {b"new": ["during-deploy"]}


def test_a_name_never_served_is_refused_at_once(core: BrokerCore) -> None:
    connect(core, b"n1", "add")
    with pytest.raises(UnknownMethod):
        core.submit("ad", [], {})


# ---- an unreachable store ----------------------------------------------------------------------------


def test_a_round_whose_adds_were_not_written_is_not_acknowledged(outage: tuple[BrokerCore, OutageStore]) -> None:
    core, store = outage
    submit(core, 2)
    store.down = True
    assert core.commit() is False  # its messages must wait: they acknowledge tasks the store lacks
    assert core.writes.down
    store.down = False
    assert core.commit() is True
    assert not core.writes.down
    assert [store.get(task_id).state for task_id in ("a1", "a2")] == [QUEUED, QUEUED]


def test_while_the_store_is_down_submits_are_refused_and_other_rounds_go_out(outage: tuple[BrokerCore, OutageStore]) -> None:
    core, store = outage
    submit(core, 1)
    store.down = True
    assert core.commit() is False
    with pytest.raises(StoreUnavailable):
        core.submit("a", [], {}, "refused")
    assert core.commit() is True  # this round added nothing
    store.down = False
    assert core.commit() is True
    core.submit("a", [], {}, "accepted")
    assert core.commit() is True
    assert store.get("refused") is None and store.get("accepted") is not None


def test_outcomes_reported_during_an_outage_are_recorded_once_the_store_is_back(outage: tuple[BrokerCore, OutageStore]) -> None:
    core, store = outage
    node = connect(core, b"n1", "a")
    submit(core, 2)
    core.commit()
    assert assigned(core) == {b"n1": ["a1", "a2"]}
    waited: list[Any] = []
    core.wait(core.find("a1"), lambda record: waited.append((record.id, record.state, record.result)))
    store.down = True
    core.report(node, [done("a1", 3), done("a2", 4)])
    assert waited == [] and core.holder("a1") == b"n1"  # still the node's: nothing recorded yet
    assert core.commit() is True
    store.down = False
    assert core.commit() is True
    assert waited == [("a1", FINISHED, 3)]
    assert store.get("a2").state == FINISHED  # type: ignore[union-attr]
    assert core.holder("a1") is None


def test_tasks_of_a_node_lost_during_an_outage_are_queued_again_once_the_store_is_back(
    outage: tuple[BrokerCore, OutageStore],
) -> None:
    core, store = outage
    connect(core, b"n1", "a")
    submit(core, 1)
    core.commit()
    assigned(core)
    store.down = True
    core.lose(b"n1", "silent")
    assert store.get("a1").state == ASSIGNED  # type: ignore[union-attr]
    store.down = False
    core.commit()
    assert store.get("a1").state == QUEUED  # type: ignore[union-attr]


def test_an_add_refused_at_flush_waits_for_the_task_that_has_the_id(outage: tuple[BrokerCore, OutageStore]) -> None:
    core, store = outage
    node = connect(core, b"n1", "a")
    first = core.submit("a", [1], {}, "same", owner="alice")
    core.commit()
    assigned(core)
    core.report(node, [done("same", 1)])
    again = core.submit("a", [1], {}, "same", owner="alice")  # deferred: the store does not know yet
    answers: dict[str, Any] = {}
    core.wait(again, lambda record: answers.setdefault("alice", (record.state, record.result)))
    stranger = core.submit("a", [1], {}, "same", owner="mallory")
    core.wait(stranger, lambda record: answers.setdefault("mallory", (record.state, record.error and record.error["code"])))
    core.commit()
    assert first.id == "same"
    assert answers == {"alice": (FINISHED, 1), "mallory": (FAILED, -32001)}  # not the stranger's task to wait for


# ---- the outbox holds a round back -------------------------------------------------------------------


def test_a_held_round_goes_out_on_release_before_what_came_since() -> None:
    outbox = Outbox()
    outbox.send((b"peer",), {"n": 1})
    outbox.hold()
    outbox.send((b"peer",), {"n": 2})
    sent: list[bytes] = []

    def send(envelope: tuple[bytes, ...], payload: bytes) -> bool:
        sent.append(payload)
        return True

    outbox.deliver(send)
    assert sent == [b'{"n":2}']
    outbox.send((b"peer",), {"n": 3})
    outbox.release()
    outbox.deliver(send)
    assert sent[1:] in ([b'[{"n":1},{"n":3}]'], [b'{"n":1}', b'{"n":3}'])


def test_while_the_store_is_down_a_commit_tries_it_only_every_so_often(outage: tuple[BrokerCore, OutageStore]) -> None:
    core, store = outage
    core.writes.probe_every_s = 60.0
    probes: list[int] = []
    heartbeat = store.heartbeat
    store.heartbeat = lambda: (probes.append(1), heartbeat())[1]  # type: ignore[method-assign]
    store.down = True
    submit(core, 1)
    assert core.commit() is False  # the flush found it down
    for _ in range(5):
        assert core.commit() is True  # nothing added: these rounds' messages go out, without a try
    assert len(probes) == 1


def test_tasks_without_kwargs_or_options_share_one_empty_dict_that_cannot_be_filled() -> None:
    """A million queued tasks must not hold two million empty dicts (zerotask.store.NO_ENTRIES): the params
    reader and the core give every task that has none the same one. Shared, it must refuse to change, or one
    careless hook would give every task its kwargs."""
    params = read_task_call({"method": "add", "args": [1, 2]})
    first = TaskRecord("t1", params[0], params[1], params[2], options=NO_ENTRIES)
    second = read_task_call({"method": "add", "args": [3, 4], "kwargs": {}})
    assert first.kwargs is second[2] is NO_ENTRIES
    assert read_task_call({"method": "add", "kwargs": {"x": 1}})[2] == {"x": 1}  # one with kwargs keeps its own
    assert params[0] is second[0]  # the name too: one string for all
    for change in (
        lambda: first.kwargs.update(x=1),
        lambda: first.kwargs.__setitem__("x", 1),
        lambda: first.kwargs.setdefault("x", 1),
        lambda: first.options.pop("x"),
        lambda: first.options.clear(),
    ):
        with pytest.raises(TypeError, match="shared"):
            change()
    assert NO_ENTRIES == {} and not NO_ENTRIES
    assert orjson.dumps(first.to_wire())  # still JSON, as an empty object


def test_the_core_stores_one_empty_options_dict_for_all(core: BrokerCore) -> None:
    records = [core.find(task_id) for task_id in submit(core, 3)]
    assert all(record.options is NO_ENTRIES for record in records)


def test_a_slow_readers_replies_wait_in_order_and_none_is_lost() -> None:
    """A peer whose ZeroMQ queue is full gets its replies later, in order, none lost or sent twice, while new ones
    keep coming behind them (the waiting ones are a deque now, sent from the front, the new appended)."""
    outbox = Outbox()
    peer = (b"peer",)
    room = 0
    sent: list[bytes] = []
    attempts = Counter[bytes]()

    def send(envelope: tuple[bytes, ...], payload: bytes) -> bool:
        nonlocal room
        attempts[payload] += 1
        if room == 0:
            return False
        room -= 1
        sent.append(payload)
        return True

    for round_number in range(50):
        for n in range(20):  # responses are sent one by one, as to a client's single requests
            outbox.send(peer, {"jsonrpc": "2.0", "result": round_number * 20 + n, "id": round_number * 20 + n})
        room = 5 if round_number < 40 else 1_000
        outbox.deliver(send)
    assert not outbox.backlogged
    assert [orjson.loads(payload)["result"] for payload in sent] == list(range(1000))
    assert max(attempts.values()) <= 2  # tried when it came or reached the front, and sent at the next try
