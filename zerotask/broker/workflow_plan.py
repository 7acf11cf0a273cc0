"""A workflow as the broker runs it: its definition read strictly (:func:`parse`), and what is due next, as
pure functions of the definition and its members' outcomes (:func:`advance`, :func:`resume`). No store, no
core: the outcomes come from a ``lookup`` the caller gives, so every rule here is tested without a broker.

A plan is a tree: chains, groups and chords over tasks, the members. Each member has a key, its path in the
tree (``"0"``, ``"1.3"``, ``"2.cb"`` for a chord's callback), from which the broker makes its task id.
A definition whose root is a task is read as a chain of that one task, so every member has a path.

The definition (JSON, :mod:`zerotask.canvas` writes it)::

    {"task": "add", "args": [1, 2], "kwargs": {}, "queue": "io", "priority": 5, "time_limit_s": 10, "immutable": false}
    {"chain": [member, ...]}      {"group": [member, ...]}      {"chord": [member, ...], "callback": member}
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zerotask import wire
from zerotask.broker.placement import check_queue
from zerotask.canvas import ARGS, CALLBACK, CHAIN, CHORD, GROUP, IMMUTABLE, KWARGS, PRIORITY, QUEUE, TASK, TIME_LIMIT
from zerotask.exceptions import InvalidParams

MAX_MEMBERS = 10_000  # tasks in one workflow, callbacks included
MAX_NESTING = 32  # levels of chains, groups and chords inside each other
MAX_CACHED_TASKS = 200_000  # members of the plans a broker keeps parsed (Plans), all workflows together
CALLBACK_KEY = "cb"  # the last part of a chord callback's key

_KINDS = frozenset((TASK, CHAIN, GROUP, CHORD))
_TASK_KEYS = frozenset((TASK, ARGS, KWARGS, QUEUE, PRIORITY, TIME_LIMIT, IMMUTABLE))


class Node:
    """A part of the plan. ``children``: a chain's stages, a group's members, a chord's header."""

    __slots__ = ("key", "parent", "index", "children")

    def __init__(self, key: str, parent: Node | None, index: int) -> None:
        self.key = key
        self.parent = parent
        self.index = index  # its place among its parent's children; -1 for a chord's callback
        self.children: list[Node] = []


class Task(Node):
    """A member: one task to queue."""

    __slots__ = ("method", "args", "kwargs", "queue", "priority", "time_limit_s", "immutable")

    def __init__(self, key: str, parent: Node | None, index: int, definition: dict[str, Any]) -> None:
        super().__init__(key, parent, index)
        self.method: str = definition[TASK]
        self.args: list[Any] = definition.get(ARGS, [])
        self.kwargs: dict[str, Any] = definition.get(KWARGS, {})
        self.queue: str | None = definition.get(QUEUE)
        self.priority: int | None = definition.get(PRIORITY)
        self.time_limit_s: float | None = definition.get(TIME_LIMIT)
        self.immutable: bool = bool(definition.get(IMMUTABLE, False))


class Chain(Node):
    __slots__ = ()


class Group(Node):
    __slots__ = ()


class Chord(Node):
    __slots__ = ("callback",)

    callback: Node


@dataclass(slots=True, eq=False)
class Plan:
    """A parsed definition, and who owns the workflow. ``low``: per group or chord header (by key), how many
    members from the first on are known to have ended; a cache that saves looking at them again."""

    definition: dict[str, Any]
    root: Node
    tasks: dict[str, Task]
    methods: frozenset[str]
    owner: str | None = None
    low: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ended:
    """A member's or a part's outcome: ``ok`` with its result as ``value``, or not, with its error object."""

    ok: bool
    value: Any


class Launch(NamedTuple):
    """A member to queue now, with its arguments (its own, after the result handed to it, if any)."""

    task: Task
    args: list[Any]


@dataclass(slots=True)
class Step:
    """What to do: queue ``launch``; end the workflow with ``outcome`` if it is decided (then nothing is launched)."""

    launch: list[Launch]
    outcome: Ended | None = None


Lookup = Callable[[Task], Ended | None]  # a member's outcome; None while it has none (or was never queued)
Input = tuple[()] | tuple[Any]  # the result handed to a part: none, or one value


# ---- reading a definition -------------------------------------------------------------------------------


def parse(definition: Any, owner: str | None = None) -> Plan:
    """The plan of a definition (a workflow of ``owner``'s); raises InvalidParams (JSON-RPC -32602) for
    anything that is not one, or one beyond the bounds: MAX_MEMBERS tasks, MAX_NESTING levels, empty chains,
    groups and chords."""
    if isinstance(definition, dict) and TASK in definition:
        definition = {CHAIN: [definition]}
    tasks: dict[str, Task] = {}
    root = _read(definition, "", None, 0, 1, tasks)
    return Plan(definition, root, tasks, frozenset(task.method for task in tasks.values()), owner)


def _read(value: Any, key: str, parent: Node | None, index: int, depth: int, tasks: dict[str, Task]) -> Node:
    if depth > MAX_NESTING:
        raise InvalidParams(f"a workflow nests at most {MAX_NESTING} levels of chains, groups and chords")
    if not isinstance(value, dict):
        raise InvalidParams("each part of a workflow is an object: a task, chain, group or chord")
    kinds = [kind for kind in _KINDS if kind in value]
    if len(kinds) != 1:
        raise InvalidParams('each part of a workflow has one of "task", "chain", "group" or "chord"')
    kind = kinds[0]
    allowed = _TASK_KEYS if kind == TASK else {kind, CALLBACK} if kind == CHORD else {kind}
    if not allowed.issuperset(value):
        raise InvalidParams(f"unknown member(s) in a {kind}: {sorted(set(value) - allowed)[:5]}")
    if kind == TASK:
        if len(tasks) >= MAX_MEMBERS:
            raise InvalidParams(f"a workflow has at most {MAX_MEMBERS} tasks")
        _check_task(value)
        task = Task(key, parent, index, value)
        tasks[key] = task
        return task
    parts = value[kind]
    if not isinstance(parts, list) or not parts:
        raise InvalidParams(f"a {kind} is a non-empty array")
    node = {CHAIN: Chain, GROUP: Group, CHORD: Chord}[kind](key, parent, index)
    node.children = [_read(part, _child_key(key, str(i)), node, i, depth + 1, tasks) for i, part in enumerate(parts)]
    if isinstance(node, Chord):
        if CALLBACK not in value:
            raise InvalidParams("a chord has a callback")
        node.callback = _read(value[CALLBACK], _child_key(key, CALLBACK_KEY), node, -1, depth + 1, tasks)
    return node


def _check_task(value: dict[str, Any]) -> None:
    method = value[TASK]
    if not isinstance(method, str) or not method or method.startswith(wire.CONTROL_PREFIX):
        raise InvalidParams('a task\'s "task" is its name: a non-empty string, not a zerotask.* name')
    if not isinstance(value.get(ARGS, []), list) or not isinstance(value.get(KWARGS, {}), dict):
        raise InvalidParams('a task\'s "args" is an array and its "kwargs" an object')
    if QUEUE in value:
        check_queue(value[QUEUE])
    priority = value.get(PRIORITY, 0)
    if type(priority) is not int or not 0 <= priority <= wire.MAX_PRIORITY:
        raise InvalidParams(f'a task\'s "priority" is an integer from 0 to {wire.MAX_PRIORITY}')
    limit = value.get(TIME_LIMIT, 1)
    if type(limit) not in (int, float) or not (math.isfinite(limit) and limit > 0):
        raise InvalidParams('a task\'s "time_limit_s" is a positive number of seconds')
    if type(value.get(IMMUTABLE, False)) is not bool:
        raise InvalidParams('a task\'s "immutable" is a boolean')


def _child_key(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


class Plans:
    """Parsed plans by workflow id, the least recently used forgotten first beyond ``max_tasks`` members in
    all: a cache (parsing a large definition for every member's end would cost as much as the workflow)."""

    def __init__(self, max_tasks: int = MAX_CACHED_TASKS) -> None:
        self.max_tasks = max_tasks
        self._plans: collections.OrderedDict[str, Plan] = collections.OrderedDict()
        self._tasks = 0

    def __contains__(self, workflow_id: str) -> bool:
        return workflow_id in self._plans

    def get(self, workflow_id: str) -> Plan | None:
        plan = self._plans.get(workflow_id)
        if plan is not None:
            self._plans.move_to_end(workflow_id)
        return plan

    def remember(self, workflow_id: str, plan: Plan) -> Plan:
        self.forget(workflow_id)
        self._plans[workflow_id] = plan
        self._tasks += len(plan.tasks)
        while self._tasks > self.max_tasks and len(self._plans) > 1:
            self.forget(next(iter(self._plans)))
        return plan

    def forget(self, workflow_id: str) -> Plan | None:
        plan = self._plans.pop(workflow_id, None)
        if plan is not None:
            self._tasks -= len(plan.tasks)
        return plan


# ---- what is due ---------------------------------------------------------------------------------------


def start(node: Node, given: Input) -> list[Launch]:
    """The members to queue to start ``node``, handed ``given``."""
    if isinstance(node, Task):
        return [Launch(node, list(node.args) if node.immutable or not given else [given[0], *node.args])]
    if isinstance(node, Chain):
        return start(node.children[0], given)
    return [launch for child in node.children for launch in start(child, given)]  # a group, a chord's header


def value(node: Node, lookup: Lookup) -> Ended | None:
    """The outcome of a part, or None while it has none. Its last step decides (it starts only once every
    step before it has finished); a failure before it is found by looking at the steps in order."""
    if isinstance(node, Task):
        return lookup(node)
    if isinstance(node, Group):
        return _all(node.children, lookup)
    if isinstance(node, Chord):
        last = value(node.callback, lookup)
        return last if last is not None else _failure(_all(node.children, lookup))
    last = value(node.children[-1], lookup)
    if last is not None:
        return last
    for stage in node.children[:-1]:
        ended = value(stage, lookup)
        if ended is None or not ended.ok:
            return _failure(ended)
    return None


def _failure(ended: Ended | None) -> Ended | None:
    return ended if ended is not None and not ended.ok else None


def _all(children: list[Node], lookup: Lookup) -> Ended | None:
    """The list of the children's results once all have one; the first failure met; else None."""
    values = []
    for child in children:
        ended = value(child, lookup)
        if ended is None or not ended.ok:
            return ended
        values.append(ended.value)
    return Ended(True, values)


def advance(plan: Plan, task: Task, ended: Ended, lookup: Lookup) -> Step:
    """What is due now that member ``task`` ended with ``ended``: a failure fails the workflow; a result
    goes up the tree, to the next stage of a chain (queued with it), to a group (which ends once all its
    members have) or a chord (whose callback is queued then), up to the workflow's own outcome."""
    if not ended.ok:
        return Step([], ended)
    node: Node = task
    while (parent := node.parent) is not None:
        if isinstance(parent, Chain):
            if node.index + 1 < len(parent.children):
                return Step(start(parent.children[node.index + 1], (ended.value,)))
        elif node.index >= 0:  # a member of a group, or of a chord's header
            gathered = _gathered(plan, parent, lookup)
            if gathered is None or not gathered.ok:
                return Step([], gathered)
            if isinstance(parent, Chord):
                return Step(start(parent.callback, (gathered.value,)))
            ended = gathered
        node = parent  # a chain's last stage, a chord's callback, a whole group: the parent has ended so
    return Step([], ended)


def _gathered(plan: Plan, node: Node, lookup: Lookup) -> Ended | None:
    """A group's (or chord header's) result once every member has ended, else None. Members are looked at
    from the first not yet seen ended on, and the look stops at the first without an outcome: as members
    end, each is looked at about twice in all, whatever the order they end in."""
    children = node.children
    seen = plan.low.get(node.key, 0)
    while seen < len(children):
        ended = value(children[seen], lookup)
        if ended is None or not ended.ok:
            plan.low[node.key] = seen
            return ended
        seen += 1
    plan.low[node.key] = seen
    return _all(children, lookup)


def resume(plan: Plan, lookup: Lookup) -> Step:
    """Everything due, from scratch: every member whose inputs are ready and that has no outcome (queueing
    one that is queued already does nothing), or the workflow's outcome. For a broker that starts and
    does not know what happened before it: it looks at every member that has started."""
    ended, launch = _due(plan.root, (), lookup)
    return Step([], ended) if ended is not None else Step(launch)


def _due(node: Node, given: Input, lookup: Lookup) -> tuple[Ended | None, list[Launch]]:
    if isinstance(node, Task):
        ended = lookup(node)
        return ended, [] if ended is not None else start(node, given)
    if isinstance(node, Chain):
        ended = None
        for stage in node.children:
            ended, launch = _due(stage, given, lookup)
            if ended is None or not ended.ok:
                return ended, launch
            given = (ended.value,)
        return ended, []
    launch, values, pending = [], [], False
    for child in node.children:
        ended, more = _due(child, given, lookup)
        if ended is not None and not ended.ok:
            return ended, []
        launch.extend(more)
        pending = pending or ended is None
        values.append(None if ended is None else ended.value)
    if pending:
        return None, launch
    if isinstance(node, Chord):
        return _due(node.callback, (values,), lookup)
    return Ended(True, values), []
