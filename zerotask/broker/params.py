"""Reading the params of a zerotask.* method: by name (an object) or by position (an array)."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from zerotask import jsonrpc, tracing
from zerotask.exceptions import InvalidParams
from zerotask.store import NO_ENTRIES

T = TypeVar("T")
_REQUIRED: Any = object()


def param(
    params: jsonrpc.Params,
    name: str,
    position: int,
    kind: type[T] | tuple[type, ...],
    default: Any = _REQUIRED,
) -> T:
    """The parameter ``name`` (or the one at ``position``), checked to be of ``kind``.

    Raises InvalidParams when it is missing without a default, or of the wrong type.
    """
    if isinstance(params, dict):
        present = name in params
        value = params.get(name)
    else:
        present = position < len(params)
        value = params[position] if present else None
    if not present or (value is None and default is not _REQUIRED):
        if default is _REQUIRED:
            raise InvalidParams(f"missing parameter {name!r}")
        return default  # type: ignore[no-any-return]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise InvalidParams(f"parameter {name!r} must be {_describe(kind)}, not {type(value).__name__}")
    return value  # type: ignore[return-value]


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


MAX_TASK_ID = 128  # characters
TaskCall = tuple[str, list[Any], dict[str, Any], str | None, dict[str, Any] | None]


def read_task_call(params: jsonrpc.Params) -> TaskCall:
    """``(method, args, kwargs, task_id, options)`` from the params of zerotask.broker.submit or call.

    Raises InvalidParams with what is wrong (the time limit's value is the TimeLimits hook's to check).
    Every task passes through here, so the common shape (an object with the right types) is checked
    first, without param()'s generality.
    """
    if isinstance(params, dict):
        method, task_id, limit = params.get("method"), params.get("task_id"), params.get("time_limit_s")
        args, kwargs = params.get("args"), params.get("kwargs")
        args = [] if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if (
            type(method) is str
            and type(args) is list
            and type(kwargs) is dict
            and (task_id is None or (type(task_id) is str and 0 < len(task_id) <= MAX_TASK_ID))
            and limit is None
            and "traceparent" not in params
        ):
            # One string per task name, not one per queued task; one empty kwargs for all that have none.
            return sys.intern(method), args, kwargs or NO_ENTRIES, task_id, None
    method = sys.intern(param(params, "method", 0, str))
    args = param(params, "args", 1, list, [])
    kwargs = param(params, "kwargs", 2, dict, {}) or NO_ENTRIES
    task_id = param(params, "task_id", 3, str, None)
    time_limit_s: float | None = param(params, "time_limit_s", 5, (int, float), None)
    traceparent: str | None = param(params, "traceparent", 6, str, None)
    if task_id is not None and not 0 < len(task_id) <= MAX_TASK_ID:
        raise InvalidParams(f"task_id must have 1 to {MAX_TASK_ID} characters")
    if traceparent is not None and not tracing.is_valid(traceparent):
        raise InvalidParams("traceparent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>, ids not all zeros")
    options: dict[str, Any] = {"time_limit_s": time_limit_s} if time_limit_s is not None else {}
    if traceparent is not None:
        options["traceparent"] = traceparent
    return method, args, kwargs, task_id, options or None
