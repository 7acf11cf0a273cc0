"""Running one task and encoding its outcome: the path every kind of worker shares.

An outcome is ``{"task_id", "result"}`` or ``{"task_id", "error"}``. :func:`execute` (a sync task) and
:func:`execute_async` (an ``async def`` task, awaited on the caller's event loop) run the task under its
caller's trace, with its attempt number for the retry decision, and return the outcome both as a dict
and encoded: encoding is what proves a result is JSON, so a result that is not (or nests too deep) is
the task's error here rather than a message the node cannot send. :func:`failure` is the outcome of a
failure the node itself saw (time limit, lost worker).
"""

from __future__ import annotations

from typing import Any

from zerotask import jsonrpc, tracing, wire
from zerotask.exceptions import ZerotaskError
from zerotask.progress import Sink, begin, end, reporting
from zerotask.task import Dispatcher

Task = dict[str, Any]
Outcome = dict[str, Any]
_NO_ARGS: list[Any] = []  # only ever unpacked: one shared default rather than a new one per task
_NO_KWARGS: dict[str, Any] = {}


def execute(dispatcher: Dispatcher, task: Task, progress: Sink | None = None) -> tuple[Outcome, bytes]:
    """Run a sync task; ``(outcome, the outcome encoded)``. Never raises for anything the task does: what
    it raises (BaseException included) and a result that is not JSON are the task's error. What it
    reports with report_progress goes to ``progress``."""
    traceparent = task.get("traceparent")
    run = dispatcher.run if traceparent is None else tracing.in_trace(traceparent, dispatcher.run)
    token = begin(task["task_id"], progress) if progress is not None else None  # (no `with`: every task runs here)
    try:
        result, error = run(task["method"], task.get("args", _NO_ARGS), task.get("kwargs", _NO_KWARGS), _attempt(task))
    finally:
        if token is not None:
            end(token)
    return encode(task, result, error)


async def execute_async(dispatcher: Dispatcher, task: Task, progress: Sink | None = None) -> tuple[Outcome, bytes]:
    """:func:`execute` for an ``async def`` task, awaited in the calling asyncio task. Raises
    CancelledError only when that task is cancelled (see :meth:`Dispatcher.run_async`)."""
    traceparent = task.get("traceparent")
    call = dispatcher.run_async(task["method"], task.get("args", _NO_ARGS), task.get("kwargs", _NO_KWARGS), _attempt(task))
    with reporting(task["task_id"], progress):  # each asyncio task has its own context: reports stay its own
        if traceparent is None:
            result, error = await call
        else:
            with tracing.running(traceparent, task["method"]):
                result, error = await call
    return encode(task, result, error)


def encode(task: Task, result: Any, error: dict[str, Any] | None) -> tuple[Outcome, bytes]:
    """The outcome of ``task`` and its encoding; a result that cannot be encoded becomes a TypeError."""
    task_id = task.get("task_id")
    if error is None:
        outcome = {"task_id": task_id, "result": result}
        try:
            encoded = jsonrpc.dumps(outcome)
            if jsonrpc.deeper_than(encoded, result, jsonrpc.MAX_DEPTH):
                # The broker wraps a result in a few more levels, and orjson cannot write very deep JSON.
                raise TypeError(f"it nests more than {jsonrpc.MAX_DEPTH} levels deep")
            return outcome, encoded
        except TypeError as problem:  # orjson's JSONEncodeError too: a lone surrogate, a huge int, an object...
            message = f"the result of {task['method']} is not JSON: {problem}"
            error = jsonrpc.error_object(
                wire.TASK_FAILED, f"TypeError: {message}", {"type": "TypeError", "message": message, "traceback": ""}
            )
    outcome = {"task_id": task_id, "error": error}
    return outcome, jsonrpc.dumps(outcome)


def failure(dispatcher: Dispatcher, task: Task, error: ZerotaskError) -> Outcome:
    """The outcome of a failure the node saw (the worker died, the task ran too long...), carrying the
    task's retry decision."""
    found = dispatcher.failure(task["method"], error, "", _attempt(task))
    found["data"]["type"] = type(error).__name__
    found["message"] = f"{type(error).__name__}: {error}"
    return {"task_id": task["task_id"], "error": found}


def time_limit_s(dispatcher: Dispatcher, task: Task, default_s: float | None) -> float | None:
    """The time limit of ``task``: its own (set by the client), else its @task option, else the node's."""
    limit = task.get("time_limit_s")
    if isinstance(limit, int | float) and limit > 0:
        return float(limit)
    found = dispatcher.get(task.get("method", ""))
    if found is not None and found.options.time_limit_s is not None:
        return found.options.time_limit_s
    return default_s


def time_limit_message(task: Task, limit_s: float | None) -> str:
    return f"{task['method']} ran past its time limit of {limit_s} s"


def _attempt(task: Task) -> int:
    attempt = task.get("attempt")
    return attempt if type(attempt) is int else 0
