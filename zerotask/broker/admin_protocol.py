"""The broker's side of the operator methods (docs/protocol.md, section 5): what an operator needs to
see (inspect, tasks, task) and to act on (retry, purge). With CURVE they are for admin keys only
(:mod:`zerotask.broker.security`).

Every answer is cheap on a broker holding millions of tasks: counts come from what the store keeps in
memory, listings are bounded, and a purge revokes at most MAX_PURGE tasks per call.
"""

from __future__ import annotations

import time
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.core import BrokerCore
from zerotask.broker.node_protocol import NodeProtocol
from zerotask.broker.params import param
from zerotask.broker.replies import Envelope, Handler, Respond
from zerotask.broker.stats import Throughput
from zerotask.exceptions import InvalidParams, TaskRevoked
from zerotask.store import Outcome, TaskRecord
from zerotask.wire import ASSIGNED, FAILED, FINAL_STATES, FINISHED, QUEUED, RETRY, REVOKED, RUNNING

DEFAULT_LIMIT = 100  # tasks listed by zerotask.broker.tasks unless asked otherwise
MAX_LIMIT = 1000
MAX_PURGE = 10_000  # tasks revoked by one zerotask.broker.purge
STATES = (QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED, REVOKED)


class AdminProtocol:
    def __init__(self, core: BrokerCore, nodes: NodeProtocol, throughput: Throughput) -> None:
        self._core = core
        self._nodes = nodes
        self._throughput = throughput

    def methods(self) -> dict[str, Handler]:
        return {
            wire.INSPECT: self.inspect,
            wire.TASKS: self.tasks,
            wire.TASK: self.task,
            wire.RETRY_TASK: self.retry,
            wire.PURGE: self.purge,
        }

    def inspect(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Nodes, queues (a queue is a task name), tasks by state, throughput and uptime."""
        nodes = [
            {
                "name": node["name"],
                "methods": node["methods"],
                "workers": node["workers"],
                "busy": node["tasks"],
                "credit": node["credit"],
                "finished": node["finished"],
                "last_seen_s": node["last_seen_s"],
            }
            for node in self._nodes.describe()
        ]
        now = time.time()
        oldest = self._core.store.oldest_queued()
        queues = [
            {"name": name, "depth": depth, "oldest_s": round(max(now - oldest[name], 0.0), 3) if name in oldest else 0.0}
            for name, depth in sorted(self._core.queued.items())
        ]
        counts = self._core.store.state_counts()
        running = sum(len(node.started) for node in self._core.nodes)
        states = {state: counts.get(state, 0) for state in STATES}
        states[RUNNING] = running
        states[ASSIGNED] = max(states[ASSIGNED] - running, 0)  # the store counts a started task as ASSIGNED
        return {
            "nodes": nodes,
            "queues": queues,
            "states": states,
            "throughput": self._throughput.rates(),
            "uptime_s": round(self._throughput.uptime_s, 3),
        }

    def tasks(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Tasks newest first (by finished_at, or created_at while unfinished), filtered and paged."""
        state: str | None = param(request.params, "state", 0, str, None)
        method: str | None = param(request.params, "method", 1, str, None)
        limit = param(request.params, "limit", 2, int, DEFAULT_LIMIT)
        before: float | None = param(request.params, "before", 3, (int, float), None)
        if state is not None and state not in STATES:
            raise InvalidParams(f"state must be one of {', '.join(STATES)}")
        if not 0 < limit <= MAX_LIMIT:
            raise InvalidParams(f"limit must be 1 to {MAX_LIMIT}")
        if state == RUNNING:  # the core's, in memory: at most what the nodes hold
            held = [record for node in self._core.nodes for record in node.held.values() if record.id in node.started]
            records = sorted(
                (r for r in held if (method is None or r.method == method) and (before is None or _at(r) < before)),
                key=_at,
                reverse=True,
            )[:limit]
        else:
            records = self._core.store.list_tasks(state, method, limit, before)
        return [self._summary(record) for record in records]

    def task(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Everything about one task; raises UnknownTask."""
        record = self._core.find(param(request.params, "task_id", 0, str))
        described = {
            "task_id": record.id,
            "method": record.method,
            "args": record.args,
            "kwargs": record.kwargs,
            "state": self._core.state(record),
            "attempts": record.attempts,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
        }
        if record.error is not None:
            described["error"] = record.error
        elif record.state == FINISHED:
            described["result"] = record.result
        holder = self._core.holder(record.id)
        if holder is not None:
            described["node"] = self._nodes.name(holder)
        return described

    def retry(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Queue a FAILED or REVOKED task again as a fresh attempt, at the back of its queue; returns
        QUEUED. UnknownTask, or InvalidParams for a task in another state."""
        task_id = param(request.params, "task_id", 0, str)
        record = self._core.find(task_id)
        if not self._core.store.reset(task_id):
            raise InvalidParams(f"task {task_id} is {self._core.state(record)}, not FAILED or REVOKED", {"task_id": task_id})
        self._core.enqueued(self._core.store.get(task_id) or record)
        return QUEUED

    def purge(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """Revoke up to MAX_PURGE queued tasks of a name (their waiters get TaskRevoked); ``more`` says
        whether some are left."""
        method = param(request.params, "method", 0, str)
        records = self._core.store.list_tasks(state=QUEUED, method=method, limit=MAX_PURGE)
        finals = []
        for record in records:
            error = TaskRevoked(f"task {record.id} was revoked", {"task_id": record.id}).to_error_object()
            finals.append((record, Outcome(record.id, REVOKED, error=error)))
        self._core.end(finals)
        return {"purged": len(records), "more": bool(self._core.store.queued_counts().get(method))}

    def _summary(self, record: TaskRecord) -> dict[str, Any]:
        summary = {
            "task_id": record.id,
            "method": record.method,
            "state": self._core.state(record) if record.state not in FINAL_STATES else record.state,
            "attempts": record.attempts,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
        }
        if record.error is not None and record.state in (FAILED, REVOKED):
            summary["error"] = record.error
        return summary


def _at(record: TaskRecord) -> float:
    return record.finished_at or record.created_at or 0.0
