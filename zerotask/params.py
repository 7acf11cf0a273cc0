"""Reading the params of a zerotask.* method: by name (an object) or by position (an array)."""

from __future__ import annotations

from typing import Any, TypeVar

from zerotask import jsonrpc
from zerotask.exceptions import InvalidParams

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
