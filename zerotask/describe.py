"""What a task looks like from outside: an OpenRPC 1.3 method object built from its function.

:func:`describe` reads the signature, the annotations and the docstring of a registered :class:`Task`;
:func:`descriptions` describes a node's tasks for ``zerotask.broker.connect`` within size bounds. The
broker gathers them and answers ``rpc.discover`` (docs/protocol.md, 5.14). Parameter schemas are JSON
Schema (draft 7, as OpenRPC 1.3 uses): what a JSON caller may send, not everything Python could check.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import logging
import types
import typing
from collections.abc import Iterable
from typing import Any

from zerotask.task import Dispatcher, Task

log = logging.getLogger(__name__)

MAX_DESCRIPTION_BYTES = 16 * 1024  # one method object, encoded; a larger one is not sent (nor kept)
MAX_DESCRIPTIONS_BYTES = 1024 * 1024  # all of a node's, in its connect message
MAX_SCHEMA_DEPTH = 8  # list[list[...]] deeper than this is described as {} (anything)
MAX_DEFAULT_BYTES = 256  # a default shown in the schema; a larger one is left out
KIND = "x-zerotask-kind"  # how a parameter binds, when JSON-RPC's by-position/by-name does not say it

_ARRAYS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Set)
_OBJECTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    None: {"type": "null"},
    type(None): {"type": "null"},
}


def describe(task: Task) -> dict[str, Any]:
    """The OpenRPC method object of ``task``: ``name``, ``params`` (content descriptors in signature
    order), ``result``, ``paramStructure`` when calls must be by position or by name, and ``summary`` (the
    docstring's first line) and ``description`` (the rest) when there is a docstring. Never raises for
    an odd function: what cannot be read is described as anything (``{}``)."""
    function = task.function
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none
        signature = None
    hints = _hints(function)
    params = [] if signature is None else [_param(p, hints) for p in signature.parameters.values()]
    returns = signature.return_annotation if signature is not None else inspect.Signature.empty
    method: dict[str, Any] = {
        "name": task.name,
        "params": params,
        "result": {"name": "result", "schema": schema(hints.get("return", returns))},
    }
    kinds = {param.get(KIND) for param in params}
    if "positional-only" in kinds and "keyword-only" not in kinds:
        method["paramStructure"] = "by-position"
    elif "keyword-only" in kinds and "positional-only" not in kinds:
        method["paramStructure"] = "by-name"
    summary, _, rest = (inspect.getdoc(function) or "").strip().partition("\n")
    if summary.strip():
        method["summary"] = summary.strip()
    if rest.strip():
        method["description"] = rest.strip()
    return method


def descriptions(
    dispatcher: Dispatcher,
    names: Iterable[str],
    max_each_bytes: int = MAX_DESCRIPTION_BYTES,
    max_total_bytes: int = MAX_DESCRIPTIONS_BYTES,
) -> dict[str, dict[str, Any]]:
    """``{name: method object}`` for the tasks ``names``, in order, as many as fit: a description over
    ``max_each_bytes`` encoded, or one that would bring the total over ``max_total_bytes``, is left out
    (its task is then served undescribed), and so is one :func:`describe` fails on."""
    described: dict[str, dict[str, Any]] = {}
    total = 0
    for name in names:
        found = dispatcher.get(name)
        if found is None:
            continue
        try:
            method = describe(found)
            size = len(json.dumps(method, allow_nan=False, separators=(",", ":")).encode())
        except Exception:  # a description is a courtesy: never let one stop a node from connecting
            log.debug("could not describe task %r", name, exc_info=True)
            continue
        if size > max_each_bytes or total + size > max_total_bytes:
            log.info("task %r described in %d bytes: not sent (over the bounds)", name, size)
            continue
        described[name] = method
        total += size
    return described


def schema(annotation: Any, depth: int = 0) -> dict[str, Any]:
    """The JSON Schema of values of the Python type ``annotation``: ``{}`` (anything) for what JSON has
    no name for, for ``Any``, for an unannotated value, and past MAX_SCHEMA_DEPTH levels."""
    if annotation is inspect.Parameter.empty or annotation is Any or depth > MAX_SCHEMA_DEPTH:
        return {}
    if isinstance(annotation, typing.Hashable) and annotation in _SCALARS:
        return dict(_SCALARS[annotation])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return schema(args[0], depth)
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [schema(arg, depth + 1) for arg in args]}
    if origin is typing.Literal:
        values = [value for value in args if value is None or isinstance(value, bool | int | float | str)]
        return {"enum": values}
    container = origin if origin is not None else annotation
    if container is tuple and args and args[-1] is not Ellipsis:
        if args == ((),):  # tuple[()]
            return {"type": "array", "maxItems": 0}
        items = [schema(arg, depth + 1) for arg in args]
        return {"type": "array", "items": items, "minItems": len(items), "maxItems": len(items)}
    if isinstance(container, type) and issubclass(container, _OBJECTS):
        described: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and schema(args[1], depth + 1):
            described["additionalProperties"] = schema(args[1], depth + 1)
        return described
    if isinstance(container, type) and issubclass(container, _ARRAYS) and not issubclass(container, str | bytes):
        described = {"type": "array"}
        if args and schema(args[0], depth + 1):
            described["items"] = schema(args[0], depth + 1)
        if container in (set, frozenset, collections.abc.Set):
            described["uniqueItems"] = True
        return described
    return {}


def _hints(function: Any) -> dict[str, Any]:
    """The function's annotations, resolved; ``{}`` when they cannot be (a name defined nowhere)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # forward references to names that do not exist, odd callables
        return {}


def _param(param: inspect.Parameter, hints: dict[str, Any]) -> dict[str, Any]:
    annotation = hints.get(param.name, param.annotation)
    if isinstance(annotation, str):  # an annotation get_type_hints could not resolve
        annotation = inspect.Parameter.empty
    item = schema(annotation)
    if param.kind is param.VAR_POSITIONAL:
        return {
            "name": param.name,
            "required": False,
            "schema": {"type": "array", **({"items": item} if item else {})},
            "description": "any number of further positional arguments (*args)",
            KIND: "var-positional",
        }
    if param.kind is param.VAR_KEYWORD:
        return {
            "name": param.name,
            "required": False,
            "schema": {"type": "object", **({"additionalProperties": item} if item else {})},
            "description": "any further arguments by name (**kwargs)",
            KIND: "var-keyword",
        }
    descriptor: dict[str, Any] = {"name": param.name, "required": param.default is param.empty, "schema": item}
    if param.default is not param.empty:
        default = _json(param.default)
        if default is not None:
            descriptor["schema"] = {**item, "default": json.loads(default)}
    if param.kind is param.POSITIONAL_ONLY:
        descriptor[KIND] = "positional-only"
    elif param.kind is param.KEYWORD_ONLY:
        descriptor[KIND] = "keyword-only"
    return descriptor


def _json(value: Any) -> str | None:
    """``value`` as JSON, if it is JSON at all and short enough to show as a default."""
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return encoded if len(encoded) <= MAX_DEFAULT_BYTES else None
