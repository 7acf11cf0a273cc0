"""What a node reported of the tasks it ran, sorted into what the core does with each: record the
outcome (FINISHED, or FAILED for good) or try the task again later (a ``retry_delay`` hook asks for it,
and :class:`Retrying` does it).

Only the node that holds a task may end it: an outcome for a task it does not hold (ended already,
unknown, taken back when it was lost, or another node's) is left out, and so is a second outcome for one
task in the same report. Callers only ever get valid JSON-RPC error objects, whatever a node says.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.assignment import NodeSlot
from zerotask.broker.hooks import first_delay
from zerotask.exceptions import InvalidParams, StoreUnavailable
from zerotask.loop import Scheduler
from zerotask.store import Outcome, Store, TaskRecord
from zerotask.wire import FAILED, FINAL_STATES, FINISHED, RETRY

log = logging.getLogger("zerotask.broker")


@dataclass(slots=True)
class Report:
    finals: list[tuple[TaskRecord, Outcome]] = field(default_factory=list)  # to record, in order
    retries: list[tuple[TaskRecord, float]] = field(default_factory=list)  # to try again after so many seconds
    decided: int = 0  # outcomes of tasks the node held
    problem: InvalidParams | None = None  # the first element that is not an outcome (the rest were not read)


def read_report(
    node: NodeSlot | None,
    outcomes: list[Any],
    holder: Mapping[str, NodeSlot],
    retry_delay: Sequence[Callable[..., Any]],
) -> Report:
    """Sort ``outcomes`` (``{"task_id", "result"}`` or ``{"task_id", "error"}``) reported by ``node``;
    ``holder`` says which node holds each task id."""
    report = Report()
    decided: set[str] = set()
    for outcome in outcomes:
        task_id = outcome.get("task_id") if isinstance(outcome, dict) else None
        if not isinstance(task_id, str):
            report.problem = InvalidParams("each finished task is an object with a task_id")
            break
        if node is None or task_id in decided or holder.get(task_id) is not node:
            continue
        decided.add(task_id)
        record = node.held[task_id]
        error = outcome.get("error")
        if error is None:
            report.finals.append((record, Outcome(task_id, FINISHED, result=outcome.get("result"), held=True)))
            continue
        if not jsonrpc.is_error_object(error):
            error = jsonrpc.error_object(wire.TASK_FAILED, "the node reported a failure that is not a JSON-RPC error object")
        delay_s = None if record.state in FINAL_STATES else first_delay(retry_delay, record, error)
        if delay_s is None:
            report.finals.append((record, Outcome(task_id, FAILED, error=error, held=True)))
        else:
            report.retries.append((record, delay_s))
    report.decided = len(decided)
    return report


class Retrying:
    """Puts failed tasks in RETRY (stored first, then ``release``-d from their node) and queues each
    again when its delay is over, unless it was revoked or adopted by a node meanwhile."""

    def __init__(
        self, store: Store, scheduler: Scheduler, release: Callable[[str], Any], on_retry: Sequence[Callable[..., Any]]
    ) -> None:
        self._store, self._scheduler, self._release, self._on_retry = store, scheduler, release, on_retry

    def retry(self, record: TaskRecord, delay_s: float) -> None:
        attempt = record.attempts + 1
        self._store.retry(record.id, attempt)
        self._release(record.id)
        record.attempts, record.state = attempt, RETRY
        self._scheduler.call_later(delay_s, functools.partial(self._due, record.id, attempt))
        for hook in self._on_retry:
            hook(record, attempt, delay_s)
        log.info("task %r (%r) failed, attempt %d in %.2f s", record.id, record.method, attempt, delay_s)

    def _due(self, task_id: str, attempt: int) -> None:
        try:
            record = self._store.get(task_id)
            # Not revoked or adopted by a node meanwhile, and this timer is the latest attempt's own.
            if record is not None and record.state == RETRY and record.attempts == attempt:
                self._store.requeue([task_id])
        except StoreUnavailable:
            self._scheduler.call_later(1.0, functools.partial(self._due, task_id, attempt))
