"""Hooks: how features plug into the broker's core, the way dramatiq has middleware.

The core (:class:`zerotask.broker.core.BrokerCore`) calls each hook it was given at fixed points of a
task's life, in the order the hooks were given. Every method here is a no-op: a hook overrides the points
it cares about, and the core calls only those. Hooks run in the broker's loop: keep them quick, and
never block.

The points, in a task's order:

- ``before_enqueue(record)``: a new task is about to be stored. Change ``record.options``, or raise a
  ZerotaskError to refuse it (the caller gets that error; nothing is stored). A task whose id exists
  already is seen here too (the store tells only when adding), and then is not stored again.
- ``after_enqueue(record)``: it is stored, QUEUED.
- ``before_assign(node, records)``: these tasks are about to be sent to ``node``.
- ``retry_delay(record, error) -> float | None``: the task failed with the JSON-RPC ``error`` object; a
  number of seconds means "try again after that long" (the first hook with a number decides), None
  leaves it to the next hook, and if none has one the task is FAILED.
- ``on_retry(record, attempt, delay_s)``: the task is in RETRY; it is queued again after ``delay_s``.
- ``after_finish(record)``: the task reached a final state (FINISHED, FAILED or REVOKED); ``record``
  carries its result or error.
- ``on_node_added(node)`` and ``on_node_lost(node, requeued, reason)``: a node connected; a node was
  lost (or disconnected), and ``requeued`` are the tasks it held, queued again.

An example, a hook that counts failures by task name::

    class CountFailures(Hooks):
        def __init__(self) -> None:
            self.failed: Counter[str] = Counter()

        def after_finish(self, record: TaskRecord) -> None:
            if record.state == FAILED:
                self.failed[record.method] += 1

    Broker(hooks=[CountFailures()]).start()

Retries and time limits are hooks themselves (below): the broker installs them first. Broker tasks
(``@task(name="broker.x")``, run in the broker's loop at submit) see only ``after_finish``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

from zerotask.broker.assignment import NodeSlot
from zerotask.exceptions import InvalidParams
from zerotask.store import TaskRecord


class Hooks:
    """The hook points, all no-ops. Subclass and override the ones you need."""

    def before_enqueue(self, record: TaskRecord) -> None:
        """A new task is about to be stored; raise a ZerotaskError to refuse it."""

    def after_enqueue(self, record: TaskRecord) -> None:
        """A new task was stored, QUEUED."""

    def before_assign(self, node: NodeSlot, records: list[TaskRecord]) -> None:
        """These tasks are about to be sent to ``node``."""

    def retry_delay(self, record: TaskRecord, error: dict[str, Any]) -> float | None:
        """Seconds before another attempt of a task that failed with ``error``, or None."""
        return None

    def on_retry(self, record: TaskRecord, attempt: int, delay_s: float) -> None:
        """The task is in RETRY and will be queued again after ``delay_s`` seconds."""

    def after_finish(self, record: TaskRecord) -> None:
        """The task reached a final state; ``record`` has its result or error."""

    def on_node_added(self, node: NodeSlot) -> None:
        """A node connected (or connected again)."""

    def on_node_lost(self, node: NodeSlot, requeued: list[TaskRecord], reason: str) -> None:
        """A node is gone; the tasks it held are queued again."""


class Retries(Hooks):
    """Retry a failed task when its failure asks for it: the node that ran it evaluated the task's own
    ``@task(retries=..., retry_on=..., retry_backoff=...)`` and put ``data.retry_in_s`` in the error
    (docs/protocol.md, 4.4). So the policy travels with the failure, from the code that declared it,
    and no peer can change it for anyone else's tasks. A careless or hostile node still cannot keep a
    task retrying for ever or park it for years: attempts and delay are capped here."""

    def __init__(self, max_attempts: int = 100, max_delay_s: float = 86400.0) -> None:
        self.max_attempts = max_attempts
        self.max_delay_s = max_delay_s

    def retry_delay(self, record: TaskRecord, error: dict[str, Any]) -> float | None:
        data = error.get("data")
        delay_s = data.get("retry_in_s") if isinstance(data, dict) else None
        if not _seconds(delay_s) or delay_s < 0:
            return None
        if record.attempts >= self.max_attempts:
            return None
        return float(min(delay_s, self.max_delay_s))


class TimeLimits(Hooks):
    """A caller's per-task time limit (``time_limit_s``, which the node enforces) must be a positive,
    finite number of seconds, at most ``max_s``; anything else is refused at submit, before it can
    reach a node."""

    def __init__(self, max_s: float = 7 * 86400.0) -> None:
        self.max_s = max_s

    def before_enqueue(self, record: TaskRecord) -> None:
        limit = record.options.get("time_limit_s")
        if limit is None:
            return
        if not _seconds(limit) or not 0 < limit <= self.max_s:
            raise InvalidParams(f"time_limit_s must be a positive number of seconds, at most {self.max_s:g}")


def _seconds(value: Any) -> TypeGuard[float]:
    """A finite JSON number (true and false are not numbers here, whatever Python thinks)."""
    return type(value) in (int, float) and math.isfinite(value)


def overriding(hooks: Sequence[Hooks], point: str) -> list[Callable[..., Any]]:
    """The bound methods of the hooks that implement ``point`` (not the no-op of the base class)."""
    return [getattr(hook, point) for hook in hooks if getattr(type(hook), point) is not getattr(Hooks, point)]


def first_delay(points: Sequence[Callable[..., Any]], record: TaskRecord, error: dict[str, Any]) -> float | None:
    """Seconds before another attempt of a task that failed with ``error``: the first ``retry_delay``
    hook that asks for one decides; None if none does."""
    for retry_delay in points:
        delay_s = retry_delay(record, error)
        if delay_s is not None:
            return float(delay_s)
    return None
