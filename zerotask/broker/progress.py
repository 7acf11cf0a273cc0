"""Progress: what running tasks say of how far they got (``report_progress`` inside a task).

A worker sends at most a few reports a second per task (it throttles them), its node batches them into
``zerotask.broker.report_progress``, and the broker keeps only the latest of each task, in memory, for as
long as a node holds the task: never a store write. Callers ask with ``zerotask.broker.progress``; each
report is also published as a ``progress`` event. Only the node that holds a task may report for it, and
what it says is bounded (MAX_INFO_BYTES of ``info``, MAX_INFO_TOTAL_BYTES for all tasks), as everything a
peer sends. ``info`` is kept as the JSON it came as (an :class:`orjson.Fragment`): parsed, 4 KiB of empty
arrays are ~80 KB of Python objects, and a node holding MAX_TRACKED tasks would have made that 8 GB.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

import orjson

from zerotask import jsonrpc
from zerotask.broker.assignment import NodeSlot
from zerotask.broker.events import EventPublisher
from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord

MAX_INFO_BYTES = 4096  # the encoded ``info`` of one report
MAX_TRACKED = 100_000  # tasks whose progress the broker keeps at once
MAX_INFO_TOTAL_BYTES = 64 * 1024 * 1024  # the ``info`` of all of them: beyond, a report's info is kept as null


class Progress(Hooks):
    """The latest report of each task a node holds; a hook, to forget a task when it ends or its node goes."""

    def __init__(self, events: EventPublisher | None = None) -> None:
        self._events = events
        self._by_task: dict[str, tuple[dict[str, Any], int]] = {}  # the report, and its info's encoded size
        self._info_bytes = 0  # the encoded size of every kept ``info``

    def report(self, node: NodeSlot, reports: list[Any]) -> int:
        """Keep what ``node`` reports for tasks it holds (``{"task_id", "done", "total", "info"}``); what is
        not valid, or about a task it does not hold, is ignored. Returns how many were kept."""
        kept = 0
        for report in reports:
            checked = _checked(report, node.held)  # (what the node does not hold costs a lookup, no more)
            if checked is None:
                continue
            progress, size = checked
            task_id = report["task_id"]
            old = self._by_task.get(task_id)
            if old is None and len(self._by_task) >= MAX_TRACKED:
                continue
            self._info_bytes -= old[1] if old is not None else 0
            if self._info_bytes + size > MAX_INFO_TOTAL_BYTES:
                progress["info"], size = None, 0
            self._info_bytes += size
            self._by_task[task_id] = (progress, size)
            kept += 1
            if self._events is not None:
                self._events.progress(task_id, progress)
        return kept

    def get(self, task_id: str) -> dict[str, Any] | None:
        """``{"done", "total", "info"}``, the task's latest report, or None."""
        kept = self._by_task.get(task_id)
        return kept[0] if kept is not None else None

    def after_finish(self, record: TaskRecord) -> None:
        self._forget(record.id)

    def on_node_lost(self, node: NodeSlot, requeued: list[TaskRecord], reason: str) -> None:
        for record in requeued:
            self._forget(record.id)

    def _forget(self, task_id: str) -> None:
        old = self._by_task.pop(task_id, None)
        if old is not None:
            self._info_bytes -= old[1]


def _checked(report: Any, held: Container[str]) -> tuple[dict[str, Any], int] | None:
    """The progress in one report for a task in ``held`` and its info's encoded size, or None if it is not
    one: ``done`` a finite number, ``total`` one or null, ``info`` any JSON of at most MAX_INFO_BYTES."""
    if not isinstance(report, dict) or not isinstance(task_id := report.get("task_id"), str) or task_id not in held:
        return None
    done, total, info = report.get("done"), report.get("total"), report.get("info")
    if not _number(done) or not (total is None or _number(total)):
        return None
    if info is None:
        return {"done": done, "total": total, "info": None}, 0
    encoded = jsonrpc.dumps_kept(info)  # (kept while the task runs)
    if len(encoded) > MAX_INFO_BYTES:
        return None
    return {"done": done, "total": total, "info": orjson.Fragment(encoded)}, len(encoded)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and type(value) is not bool and math.isfinite(value)
