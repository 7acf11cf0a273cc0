"""What a node reported of the tasks it ran, sorted into what the core does with each: record the
outcome (FINISHED, or FAILED for good) or try the task again later (a ``retry_delay`` hook asks for it).

Only the node that holds a task may end it: an outcome for a task it does not hold (ended already,
unknown, taken back when it was lost, or another node's) is left out, and so is a second outcome for one
task in the same report. Callers only ever get valid JSON-RPC error objects, whatever a node says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.assignment import NodeSlot
from zerotask.broker.hooks import first_delay
from zerotask.exceptions import InvalidParams
from zerotask.store import Outcome, TaskRecord
from zerotask.wire import FAILED, FINAL_STATES, FINISHED


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
