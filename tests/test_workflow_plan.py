"""The workflow plan's pure functions (zerotask.broker.workflow_plan): reading a definition, and what is due
as members end, with outcomes from a dict instead of a store. ``simulate`` runs a whole workflow the way
the broker does, calling Python functions for the tasks, members ending in the order a test picks."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from zerotask.broker.workflow_plan import MAX_MEMBERS, MAX_NESTING, Ended, Plan, Plans, Task, advance, parse, resume, start, value
from zerotask.canvas import chain, chord, group, sig
from zerotask.exceptions import InvalidParams

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "tsum": lambda values: sum(values),
    "echo": lambda *args, **kwargs: [list(args), kwargs],
    "fail": lambda *args: 1 / 0,
}
BOOM = {"code": -32000, "message": "ZeroDivisionError: division by zero"}


def simulate(definition: dict[str, Any], order: str = "fifo", seed: int = 0) -> tuple[Ended, list[tuple[str, list[Any]]]]:
    """Run a workflow to its end; returns its outcome and every member queued, (key, args), in order.
    ``order``: which queued member ends next (fifo, lifo, or random)."""
    plan = parse(definition)
    outcomes: dict[str, Ended] = {}
    queued: list[tuple[str, list[Any]]] = []
    waiting: list[tuple[Task, list[Any]]] = []
    rng = random.Random(seed)

    def launch(step_launch: list[Any]) -> None:
        for task, args in step_launch:
            assert task.key not in [key for key, _ in queued], f"{task.key} queued twice"
            queued.append((task.key, args))
            waiting.append((task, args))

    launch(start(plan.root, ()))
    while waiting:
        index = {"fifo": 0, "lifo": -1}.get(order, rng.randrange(len(waiting)))
        task, args = waiting.pop(index)
        try:
            ended = Ended(True, FUNCTIONS[task.method](*args, **task.kwargs))
        except ZeroDivisionError:
            ended = Ended(False, BOOM)
        outcomes[task.key] = ended
        step = advance(plan, task, ended, lambda member: outcomes.get(member.key))
        if step.outcome is not None:
            return step.outcome, queued
        launch(step.launch)
    raise AssertionError("the workflow never ended")


# ---- reading a definition -------------------------------------------------------------------------------


def test_members_are_keyed_by_their_place() -> None:
    definition = chain(sig("add", 1, 2), group(sig("mul", 1), sig("mul", 2)), chord([sig("add", 1)], sig("tsum"))).to_json()
    plan = parse(definition)
    assert list(plan.tasks) == ["0", "1.0", "1.1", "2.0", "2.cb"]
    assert plan.methods == {"add", "mul", "tsum"}
    assert plan.definition is definition


def test_a_lone_task_is_a_chain_of_one() -> None:
    plan = parse(sig("add", 1, 2).to_json())
    assert list(plan.tasks) == ["0"] and plan.definition == {"chain": [{"task": "add", "args": [1, 2]}]}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "add",
        {},
        {"task": "add", "chain": []},
        {"task": "add", "extra": 1},
        {"task": ""},
        {"task": 5},
        {"task": "zerotask.workflow"},
        {"task": "zerotask.broker.submit"},
        {"task": "add", "args": {}},
        {"task": "add", "kwargs": []},
        {"task": "add", "queue": "no spaces"},
        {"task": "add", "priority": 10},
        {"task": "add", "priority": True},
        {"task": "add", "priority": 1.0},
        {"task": "add", "time_limit_s": 0},
        {"task": "add", "time_limit_s": False},
        {"task": "add", "immutable": 1},
        {"chain": []},
        {"chain": {}},
        {"group": []},
        {"group": [{"task": "add"}], "callback": {"task": "add"}},
        {"chord": [{"task": "add"}]},
        {"chord": [], "callback": {"task": "add"}},
        {"chord": [{"task": "add"}], "callback": "tsum"},
        {"chain": [{"task": "add"}, 5]},
    ],
)
def test_anything_else_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidParams):
        parse(bad)


def test_members_and_nesting_are_bounded() -> None:
    parse({"group": [{"task": "add"}] * MAX_MEMBERS})
    with pytest.raises(InvalidParams, match="at most"):
        parse({"group": [{"task": "add"}] * (MAX_MEMBERS + 1)})
    deep: dict[str, Any] = {"task": "add"}
    for _ in range(MAX_NESTING - 1):
        deep = {"chain": [deep]}
    parse(deep)
    with pytest.raises(InvalidParams, match="nests"):
        parse({"group": [deep]})


# ---- running one ---------------------------------------------------------------------------------------


def test_a_chain_hands_each_result_to_the_next_stage() -> None:
    outcome, queued = simulate(chain(sig("add", 1, 2), sig("mul", 10)).to_json())
    assert outcome == Ended(True, 30)
    assert queued == [("0", [1, 2]), ("1", [3, 10])]  # one at a time


def test_an_immutable_stage_takes_no_result() -> None:
    outcome, _ = simulate(chain(sig("add", 1, 2), sig("add", 5, 5).set(immutable=True)).to_json())
    assert outcome == Ended(True, 10)


@pytest.mark.parametrize("order", ["fifo", "lifo", "random"])
def test_a_group_gives_its_results_in_order_whatever_order_they_end_in(order: str) -> None:
    outcome, queued = simulate(group(sig("add", n, n) for n in range(20)).to_json(), order)
    assert outcome == Ended(True, [2 * n for n in range(20)])
    assert len(queued) == 20


@pytest.mark.parametrize("order", ["fifo", "lifo", "random"])
def test_a_chord_calls_its_callback_once_with_the_list(order: str) -> None:
    outcome, queued = simulate(chord(group(sig("add", 1, 1), sig("add", 2, 2), sig("add", 3, 3)), sig("tsum")).to_json(), order)
    assert outcome == Ended(True, 12)
    assert queued[-1] == ("cb", [[2, 4, 6]])
    assert [key for key, _ in queued].count("cb") == 1


@pytest.mark.parametrize("seed", range(5))
def test_nesting_chains_groups_and_chords(seed: int) -> None:
    workflow = chain(
        sig("add", 1, 2),  # 3
        group(sig("mul", 2), chain(sig("add", 1), sig("mul", 10))),  # [6, 40]
        chord([sig("echo"), sig("echo", "x")], sig("echo")),  # a chord stage: each header task gets the list
        sig("echo", k="v").set(immutable=True),
    )
    outcome, _ = simulate(workflow.to_json(), "random", seed)
    assert outcome == Ended(True, [[], {"k": "v"}])
    inner, queued = simulate(chain(*workflow.stages[:3]).to_json(), "random", seed)
    header = [[[[6, 40]], {}], [[[6, 40], "x"], {}]]  # each echo got the group's list first
    assert dict(queued)["2.cb"] == [header]
    assert inner == Ended(True, [[header], {}])


def test_a_group_of_chords_and_a_chord_of_chains() -> None:
    workflow = group(
        chord([sig("add", 1, 1), sig("add", 2, 2)], sig("tsum")),
        chord([chain(sig("add", 1, 1), sig("mul", 3)), group(sig("add", 0, 1))], sig("echo")),
    )
    outcome, _ = simulate(workflow.to_json(), "lifo")
    assert outcome == Ended(True, [6, [[[6, [1]]], {}]])


def test_a_failing_member_fails_the_workflow_with_its_error_and_nothing_after_it_is_queued() -> None:
    outcome, queued = simulate(chain(sig("add", 1, 2), sig("fail"), sig("mul", 10)).to_json())
    assert outcome == Ended(False, BOOM)
    assert [key for key, _ in queued] == ["0", "1"]
    outcome, queued = simulate(chord(group(sig("add", 1, 1), sig("fail"), sig("add", 2, 2)), sig("tsum")).to_json())
    assert outcome == Ended(False, BOOM)
    assert "cb" not in dict(queued)


def test_members_of_a_group_are_looked_at_about_twice_each_whatever_the_order() -> None:
    plan = parse(group(sig("add", n, n) for n in range(1000)).to_json())
    outcomes: dict[str, Ended] = {}
    looked = 0

    def lookup(task: Task) -> Ended | None:
        nonlocal looked
        looked += 1
        return outcomes.get(task.key)

    for key in reversed(list(plan.tasks)):  # the worst order for looking from the ender's neighbour on
        outcomes[key] = Ended(True, 1)
        step = advance(plan, plan.tasks[key], outcomes[key], lookup)
    assert step.outcome == Ended(True, [1] * 1000)
    assert looked <= 3 * 1000


# ---- from scratch (a broker that starts) ------------------------------------------------------------------


def outcomes_of(plan: Plan, ended: dict[str, Any]) -> Callable[[Task], Ended | None]:
    return lambda task: Ended(True, ended[task.key]) if task.key in ended else None


def test_resume_queues_whatever_is_due_and_nothing_that_ended() -> None:
    plan = parse(chain(sig("add", 1, 2), chord([sig("mul", 2), sig("mul", 3)], sig("tsum")), sig("mul", 10)).to_json())
    assert [(task.key, args) for task, args in resume(plan, outcomes_of(plan, {})).launch] == [("0", [1, 2])]
    mid = resume(plan, outcomes_of(plan, {"0": 3, "1.0": 6}))
    assert [(task.key, args) for task, args in mid.launch] == [("1.1", [3, 3])]  # (1.1 may be queued: no matter)
    header_done = resume(plan, outcomes_of(plan, {"0": 3, "1.0": 6, "1.1": 9}))
    assert [(task.key, args) for task, args in header_done.launch] == [("1.cb", [[6, 9]])]
    last = resume(plan, outcomes_of(plan, {"0": 3, "1.0": 6, "1.1": 9, "1.cb": 15}))
    assert [(task.key, args) for task, args in last.launch] == [("2", [15, 10])]
    done = resume(plan, outcomes_of(plan, {"0": 3, "1.0": 6, "1.1": 9, "1.cb": 15, "2": 150}))
    assert done.launch == [] and done.outcome == Ended(True, 150)


def test_resume_finds_a_failure_anywhere() -> None:
    plan = parse(group(sig("add", 1, 1), chain(sig("add", 1, 1), sig("mul", 2))).to_json())
    outcomes = {"0": None, "1.0": Ended(True, 2), "1.1": Ended(False, BOOM)}
    step = resume(plan, lambda task: outcomes.get(task.key))
    assert step.outcome == Ended(False, BOOM) and step.launch == []
    assert value(plan.root, lambda task: outcomes.get(task.key)) is None  # (the group waits for its first member)


def test_parsed_plans_are_kept_up_to_a_number_of_members_the_least_recently_used_forgotten_first() -> None:
    plans = Plans(max_tasks=5)
    for name in ("a", "b", "c"):
        plans.remember(name, parse(group(sig("add", 1, 1), sig("add", 2, 2)).to_json()))  # 2 members each
        plans.get("a")
    assert "a" in plans and "b" not in plans and "c" in plans
    assert plans.forget("a") is not None and plans.forget("a") is None
