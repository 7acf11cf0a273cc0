"""BrokerCore as a whole: the hooks see a task's life in order, and a long seeded run of random operations
keeps the queued counts and the holders of every task consistent. The shared helpers and fixtures are in
tests/core_helpers.py.
"""

from __future__ import annotations

import random
from collections import Counter

from tests.core_helpers import Recorder, assigned, brute_queued, connect, done, failed, make_core

# pytest finds fixtures by name in the test module: each is imported as itself (core needs clock and recorder).
from tests.core_helpers import clock as clock
from tests.core_helpers import core as core
from tests.core_helpers import recorder as recorder
from zerotask.broker.assignment import NodeId, NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Retries
from zerotask.exceptions import UnknownMethod
from zerotask.testing import ManualClock
from zerotask.wire import ASSIGNED, FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, REVOKED, RUNNING

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
        ("after_enqueue", "t1", ASSIGNED),  # (the node was free and nothing queued: the direct path)
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
