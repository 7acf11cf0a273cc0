"""Progress: what running tasks say of how far they got (``report_progress`` inside a task).

A worker sends at most a few reports a second per task (it throttles them), its node batches them into
``zerotask.broker.report_progress``, and the broker keeps only the latest of each task, in memory, for as
long as a node holds the task: never a store write. Callers ask with ``zerotask.broker.progress``; each
report is also published as a ``progress`` event. Only the node that holds a task may report for it, and
what it says is bounded (MAX_INFO_BYTES of ``info``), as everything a peer sends.
"""

from __future__ import annotations

import math
from typing import Any

from zerotask import jsonrpc
from zerotask.broker.assignment import NodeSlot
from zerotask.broker.events import EventPublisher
from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord

MAX_INFO_BYTES = 4096  # the encoded ``info`` of one report
MAX_TRACKED = 100_000  # tasks whose progress the broker keeps at once


class Progress(Hooks):
    """The latest report of each task a node holds; a hook, to forget a task when it ends or its node goes."""

    def __init__(self, events: EventPublisher | None = None) -> None:
        self._events = events
        self._by_task: dict[str, dict[str, Any]] = {}

    def report(self, node: NodeSlot, reports: list[Any]) -> int:
        """Keep what ``node`` reports for tasks it holds (``{"task_id", "done", "total", "info"}``); what is
        not valid, or about a task it does not hold, is ignored. Returns how many were kept."""
        kept = 0
        for report in reports:
            progress = _checked(report)
            if progress is None or report["task_id"] not in node.held:
                continue
            task_id = report["task_id"]
            if task_id not in self._by_task and len(self._by_task) >= MAX_TRACKED:
                continue
            self._by_task[task_id] = progress
            kept += 1
            if self._events is not None:
                self._events.progress(task_id, progress)
        return kept

    def get(self, task_id: str) -> dict[str, Any] | None:
        """``{"done", "total", "info"}``, the task's latest report, or None."""
        return self._by_task.get(task_id)

    def after_finish(self, record: TaskRecord) -> None:
        self._by_task.pop(record.id, None)

    def on_node_lost(self, node: NodeSlot, requeued: list[TaskRecord], reason: str) -> None:
        for record in requeued:
            self._by_task.pop(record.id, None)


def _checked(report: Any) -> dict[str, Any] | None:
    """The progress in one report, or None if it is not one: ``done`` a finite number, ``total`` one or
    null, ``info`` any JSON of at most MAX_INFO_BYTES."""
    if not isinstance(report, dict) or not isinstance(report.get("task_id"), str):
        return None
    done, total, info = report.get("done"), report.get("total"), report.get("info")
    if not _number(done) or not (total is None or _number(total)):
        return None
    if info is not None and len(jsonrpc.dumps(info)) > MAX_INFO_BYTES:
        return None
    return {"done": done, "total": total, "info": info}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and type(value) is not bool and math.isfinite(value)
