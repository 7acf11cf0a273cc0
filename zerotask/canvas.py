"""Workflows, as Celery's canvas: ``sig``, ``chain``, ``group`` and ``chord``, kept and run by the broker.

::

    from zerotask.canvas import chain, chord, group, sig

    workflow_id = client.apply_async(chain(sig("add", 1, 2), sig("mul", 10)))
    client.result(workflow_id)                                   # 30
    client.apply_async(chord(group(sig("add", 1, 1), sig("add", 2, 2)), sig("tsum")))   # tsum([2, 4])

A workflow is a value: task names and arguments (JSON carries no functions), which :meth:`to_json` turns
into the definition the broker receives (``zerotask.broker.workflow``, docs/protocol.md, 5.15). The broker
stores it and queues each member when its inputs are ready, so nothing here waits or polls.

How results flow: in a chain, each stage's result is prepended to the next stage's arguments (a group or
chord stage hands it to each of its first tasks); a group's result is the list of its members' results, in
order; a chord calls its callback with that list. A signature ``.set(immutable=True)`` takes no result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The definition's keys: one place, read by the broker too (zerotask.broker.workflow_plan).
TASK, CHAIN, GROUP, CHORD, CALLBACK = "task", "chain", "group", "chord", "callback"
ARGS, KWARGS = "args", "kwargs"
QUEUE, PRIORITY, TIME_LIMIT, IMMUTABLE = "queue", "priority", "time_limit_s", "immutable"


class Canvas:
    """What every workflow part has: ``a | b`` is ``chain(a, b)``, and :meth:`to_json`."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __or__(self, other: Canvas) -> Chain:
        return chain(self, other)


@dataclass(frozen=True, slots=True)
class Sig(Canvas):
    """A task by name with its arguments: ``sig("add", 1, 2)``. Delivery options go through :meth:`set`,
    so they never clash with the task's own keyword arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def set(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        time_limit: float | None = None,
        immutable: bool | None = None,
    ) -> Sig:
        """A copy with delivery options: the ``queue``, the ``priority`` (0 to 9), a ``time_limit`` in
        seconds, and ``immutable`` (it takes no result from the stage before it)."""
        options = dict(self.options)
        for name, value in ((QUEUE, queue), (PRIORITY, priority), (TIME_LIMIT, time_limit), (IMMUTABLE, immutable)):
            if value is not None:
                options[name] = value
        return Sig(self.method, self.args, self.kwargs, options)

    def to_json(self) -> dict[str, Any]:
        definition: dict[str, Any] = {TASK: self.method}
        if self.args:
            definition[ARGS] = list(self.args)
        if self.kwargs:
            definition[KWARGS] = dict(self.kwargs)
        definition.update(self.options)
        return definition


@dataclass(frozen=True, slots=True)
class Chain(Canvas):
    """Stages run one after the other, each given the result of the one before; its result is the last's."""

    stages: tuple[Canvas, ...]

    def to_json(self) -> dict[str, Any]:
        return {CHAIN: [stage.to_json() for stage in self.stages]}

    def __or__(self, other: Canvas) -> Chain:
        return chain(*self.stages, other)


@dataclass(frozen=True, slots=True)
class Group(Canvas):
    """Members run in parallel; its result is the list of theirs, in order."""

    members: tuple[Canvas, ...]

    def to_json(self) -> dict[str, Any]:
        return {GROUP: [member.to_json() for member in self.members]}


@dataclass(frozen=True, slots=True)
class Chord(Canvas):
    """A group, then ``callback`` called once with the list of the group's results; its result is the callback's."""

    header: Group
    callback: Canvas

    def to_json(self) -> dict[str, Any]:
        return {CHORD: [member.to_json() for member in self.header.members], CALLBACK: self.callback.to_json()}


Workflow = Sig | Chain | Group | Chord


def sig(method: str, *args: Any, **kwargs: Any) -> Sig:
    """The task ``method`` called with ``args`` and ``kwargs`` (Celery's ``signature``)."""
    if not isinstance(method, str) or not method:
        raise ValueError("a signature needs a task name")
    return Sig(method, args, kwargs)


def chain(*stages: Canvas) -> Chain:
    """``chain(sig("add", 1, 2), sig("mul", 10))``: mul(add(1, 2), 10). Chains given as stages are flattened."""
    flat: list[Canvas] = []
    for stage in stages:
        flat.extend(stage.stages if isinstance(stage, Chain) else (_part(stage),))
    if not flat:
        raise ValueError("a chain needs at least one stage")
    return Chain(tuple(flat))


def group(*members: Canvas | Iterable[Canvas]) -> Group:
    """``group(sig("add", 1, 1), sig("add", 2, 2))``, or ``group(sig("add", i, i) for i in range(10))``."""
    if len(members) == 1 and not isinstance(members[0], Canvas):
        members = tuple(members[0])
    if not members:
        raise ValueError("a group needs at least one member")
    return Group(tuple(_part(member) for member in members))


def chord(header: Group | Iterable[Canvas], callback: Canvas) -> Chord:
    """``chord(group(...), sig("tsum"))``: the group, then the callback with the list of its results."""
    return Chord(header if isinstance(header, Group) else group(header), _part(callback))


def _part(value: Any) -> Canvas:
    if not isinstance(value, Canvas):
        raise TypeError(f"a workflow is made of sig, chain, group and chord, not {type(value).__name__}")
    return value


__all__ = ["Canvas", "Chain", "Chord", "Group", "Sig", "Workflow", "chain", "chord", "group", "sig"]
