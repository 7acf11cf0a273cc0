"""Rate limits, enforced by the broker for all nodes together: parsing, the core in-process (wall time
follows a manual clock), and real nodes."""

from __future__ import annotations

import time

import pytest

from tests.core_helpers import assigned, connect, done, submit
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.core import BrokerCore
from zerotask.client import AsyncClient
from zerotask.store import MemoryStore
from zerotask.task import parse_rate
from zerotask.testing import Cluster, ManualClock, scaled

EPOCH = 1_700_000_000.0


def test_rates_are_read_per_second_minute_or_hour() -> None:
    assert parse_rate("100/s") == 100
    assert parse_rate("6/m") == pytest.approx(0.1)
    assert parse_rate("36 / h") == pytest.approx(0.01)
    assert parse_rate("10") == 10
    for bad in ("0/s", "-1/s", "ten/s", "5/d", "", None, 5, "1" * 40):
        assert parse_rate(bad) is None


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [EPOCH]
    monkeypatch.setattr(time, "time", lambda: now[0])
    store = MemoryStore()
    assert store.take_tokens("a", 2.0, 2.0, 5) == 2
    assert store.take_tokens("a", 2.0, 2.0, 5) == 0
    now[0] += 0.5
    assert store.take_tokens("a", 2.0, 2.0, 5) == 1
    store.take_tokens("a", 2.0, 2.0, -10)  # given back: never beyond the burst
    assert store.take_tokens("a", 2.0, 2.0, 5) == 2


@pytest.fixture(autouse=False)
def wall(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    monkeypatch.setattr(time, "time", lambda: EPOCH + clock.now)
    return clock


def test_the_broker_hands_out_a_limited_name_only_as_fast_as_its_rate(core: BrokerCore, wall: ManualClock) -> None:
    core.rate_limits.announce({"a": {"rate_limit": "2/s"}})
    node = connect(core, b"n1", "a", "b", credit=100)
    submit(core, 6)
    submit(core, 3, method="b")
    first = assigned(core)[b"n1"]
    assert sorted(first) == ["a1", "a2", "b1", "b2", "b3"]  # a burst of two a's; b has no limit
    assert wall.pending  # woken when the next token is due
    core.report(node, [done(task_id) for task_id in first])
    wall.advance(0.5)
    assert assigned(core) == {b"n1": ["a3"]}
    wall.advance(1.0)
    assert assigned(core) == {b"n1": ["a4", "a5"]}


def test_the_limit_is_for_all_nodes_together(core: BrokerCore, wall: ManualClock) -> None:
    core.rate_limits.announce({"a": {"rate_limit": "3/s"}})
    for node_id in (b"n1", b"n2", b"n3"):
        connect(core, node_id, "a", credit=10)
    submit(core, 12)
    handed = assigned(core)
    assert sum(len(task_ids) for task_ids in handed.values()) == 3


def test_real_nodes_run_a_limited_task_at_its_rate() -> None:
    with Cluster() as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=2)
        cluster.start_node("tests.tasks", workers=2)
        started = time.time()
        handles = [client.limited(n) for n in range(15)]
        ran = sorted(handle.result(timeout=scaled(30)) for handle in handles)
        took = ran[-1] - started
        print(f"15 tasks limited to 5/s (a burst of 5) ran over {took:.2f} s")
        assert took >= 1.6  # 5 at once, then one every 0.2 s: the last about 2 s in
