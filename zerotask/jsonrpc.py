"""The JSON-RPC 2.0 envelope: the one place zerotask turns bytes into messages and back.

Every message on every zerotask socket is JSON-RPC 2.0. This module parses incoming bytes into
:class:`Request` and :class:`Response` values (or an error response when the bytes are not valid
JSON-RPC), and builds outgoing messages. It is the only module that calls orjson.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# Error codes from the JSON-RPC 2.0 specification, section 5.1.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# zerotask's own codes are in zerotask.wire.

ERROR_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}

# orjson decodes up to 1024 levels of nesting but encodes only 254. What a peer sends must nest less, with
# room for the levels our own messages wrap around it (a task's args reach a node 4 levels deeper), or
# the broker would accept a message that it then cannot send on.
_ENCODABLE_DEPTH = 254
MAX_DEPTH = 200

RequestId = str | int | float | None
Params = list[Any] | dict[str, Any]


class InvalidMessage(Exception):
    """Raised by the parsers with the JSON-RPC error code that the sender deserves."""

    def __init__(self, code: int, message: str | None = None, request_id: RequestId = None) -> None:
        self.code = code
        self.request_id = request_id
        super().__init__(message or ERROR_MESSAGES.get(code, "Error"))


@dataclass(slots=True)
class Request:
    """A call or a notification (``is_notification``: no ``id`` member, so no response is sent)."""

    method: str
    params: Params
    id: RequestId = None
    is_notification: bool = False


@dataclass(slots=True)
class Response:
    """A response: exactly one of ``result`` or ``error`` is meaningful (``error`` is None on success)."""

    id: RequestId
    result: Any = None
    error: dict[str, Any] | None = None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_kept(value: Any) -> bytes:
    """:func:`dumps`, for JSON kept a long time (a queued task's packed arguments): orjson's bytes keep the
    room of the buffer they were written in, about 8 KB of RSS for 2 KB of JSON (measured); a copy keeps its
    length."""
    return b"%s" % orjson.dumps(value)


def loads(data: bytes | str, max_depth: int | None = None) -> Any:
    """Decode JSON; raises InvalidMessage(PARSE_ERROR) on anything that is not JSON, and (with
    ``max_depth``) on arrays and objects nested more than ``max_depth`` levels deep."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidMessage(PARSE_ERROR) from error
    if max_depth is not None and deeper_than(data, value, max_depth):
        raise InvalidMessage(PARSE_ERROR)
    return value


def deeper_than(data: bytes | str, value: Any, levels: int) -> bool:
    """Whether ``value`` (decoded from ``data``) nests arrays and objects more than ``levels`` deep."""
    brackets = data.count(b"[") + data.count(b"{") if isinstance(data, bytes) else data.count("[") + data.count("{")
    if brackets <= levels:
        return False  # the common case, decided by two scans at C speed
    # orjson encodes at most _ENCODABLE_DEPTH levels, so wrapped in the rest, value encodes only if it fits.
    for _ in range(_ENCODABLE_DEPTH - levels):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def items(payload: bytes) -> list[dict[str, Any]]:
    """The message objects in one received payload (a single object or a batch), for a peer that reads
    what the broker sends; anything that is not an object is left out, and so is a payload that is not
    JSON at all (the broker never sends one)."""
    try:
        message = loads(payload)
    except InvalidMessage:
        return []
    return [item for item in (message if isinstance(message, list) else [message]) if isinstance(item, dict)]


# ---- building messages -------------------------------------------------------------------------


def request(method: str, params: Params | None = None, request_id: RequestId = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    message["id"] = request_id
    return message


def notification(method: str, params: Params | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def result(request_id: RequestId, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": value, "id": request_id}


def error_object(code: int, message: str | None = None, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message or ERROR_MESSAGES.get(code, "Error")}
    if data is not None:
        error["data"] = data
    return error


def array(encoded: list[bytes]) -> bytes:
    """A batch of messages encoded one by one: the one message itself when there is only one."""
    return encoded[0] if len(encoded) == 1 else b"[" + b",".join(encoded) + b"]"


def is_error_object(error: Any) -> bool:
    """Whether ``error`` is a JSON-RPC error object: an integer code and a string message."""
    return isinstance(error, dict) and type(error.get("code")) is int and isinstance(error.get("message"), str)


def error(request_id: RequestId, error: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


# ---- parsing messages --------------------------------------------------------------------------


def parse_request(item: Any) -> Request:
    """Validate one decoded request object; raises InvalidMessage with the code to answer."""
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        raise InvalidMessage(INVALID_REQUEST, request_id=_id_of(item))
    method = item.get("method")
    if not isinstance(method, str):
        raise InvalidMessage(INVALID_REQUEST, request_id=_id_of(item))
    has_id = "id" in item
    request_id = item.get("id")
    if has_id and not (request_id is None or isinstance(request_id, str | int | float)):
        raise InvalidMessage(INVALID_REQUEST)
    if isinstance(request_id, bool):
        raise InvalidMessage(INVALID_REQUEST)
    params = item.get("params", [])
    if not isinstance(params, list | dict):
        raise InvalidMessage(INVALID_REQUEST, request_id=request_id)
    return Request(method, params, request_id, not has_id)


def parse_response(item: Any) -> Response:
    """Validate one decoded response object; raises InvalidMessage(INVALID_REQUEST) if it is not one."""
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or "id" not in item:
        raise InvalidMessage(INVALID_REQUEST)
    if "error" in item:
        err = item["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            raise InvalidMessage(INVALID_REQUEST)
        return Response(item["id"], error=err)
    if "result" not in item:
        raise InvalidMessage(INVALID_REQUEST)
    return Response(item["id"], item["result"])


def is_response(item: Any) -> bool:
    return isinstance(item, dict) and "method" not in item and ("result" in item or "error" in item)


def _id_of(item: Any) -> RequestId:
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return value
    return None
