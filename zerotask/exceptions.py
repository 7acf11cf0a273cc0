"""Exceptions a zerotask user can catch, and their mapping to and from JSON-RPC error objects.

Errors are values on the wire (JSON-RPC error objects with a code and data) and exceptions in Python:
:func:`from_error_object` turns the first into the second, :meth:`ZerotaskError.to_error_object` back.
"""

from __future__ import annotations

from typing import Any

from zerotask import jsonrpc, wire


class ZerotaskError(Exception):
    """Base class of every error zerotask raises on purpose."""

    code = jsonrpc.INTERNAL_ERROR

    def __init__(self, message: str = "", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error_object(self) -> dict[str, Any]:
        return jsonrpc.error_object(self.code, self.message or None, self.data)


class RemoteError(ZerotaskError):
    """A JSON-RPC error from the other side that has no more specific class (``code`` says which)."""

    def __init__(self, code: int, message: str = "", data: Any = None) -> None:
        super().__init__(message, data)
        self.code = code


class ProtocolError(ZerotaskError):
    """The peer sent something that is not the JSON-RPC zerotask expected."""

    code = jsonrpc.INVALID_REQUEST


class UnknownMethod(ZerotaskError, AttributeError):
    """No connected node serves this task name (JSON-RPC -32601, "Method not found")."""

    code = jsonrpc.METHOD_NOT_FOUND

    def __str__(self) -> str:  # the broker's message is the bare "Method not found"; its data names the method
        method = self.data.get("method") if isinstance(self.data, dict) else None
        return f"{self.message}: {method!r}" if isinstance(method, str) else self.message


class InvalidParams(ZerotaskError, TypeError):
    """The parameters do not fit the method (JSON-RPC -32602)."""

    code = jsonrpc.INVALID_PARAMS


class UnknownTask(ZerotaskError, KeyError):
    """The broker has no task with this id."""

    code = wire.UNKNOWN_TASK

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class TaskTimeout(ZerotaskError, TimeoutError):
    """A wait ran out of time. The task itself may still finish later."""

    code = wire.TIMED_OUT


class NotReady(ZerotaskError):
    """The task has no result yet (answer to a result request that asked not to wait)."""

    code = wire.NOT_READY


class TaskRevoked(ZerotaskError):
    """The task was revoked before it finished."""

    code = wire.REVOKED_CODE


class QueueFull(ZerotaskError):
    """The broker refuses more work now (a bound is reached: its queue, or what one peer may wait for);
    ``data`` says which, with its ``limit``. Try again later."""

    code = wire.QUEUE_FULL


class Forbidden(ZerotaskError, PermissionError):
    """The broker requires CURVE and this key may not do that: call a node method without a node key,
    or submit a task under an id that another key's task has."""

    code = wire.FORBIDDEN


class StoreUnavailable(ZerotaskError):
    """The broker cannot reach its store now (a Redis that is down or failing over): it accepted nothing
    from this request. It resumes by itself once the store is back; try again, or another broker."""

    code = wire.STORE_UNAVAILABLE


class WorkerLost(ZerotaskError):
    """Raised node-side (and reported as a TaskError of type WorkerLost) when a worker process dies
    while running a task."""

    code = wire.TASK_FAILED


class TimeLimitExceeded(ZerotaskError):
    """A task ran past its time limit; its worker was killed (reported as a TaskError of this type)."""

    code = wire.TASK_FAILED


class ResultTooLarge(ZerotaskError):
    """A task's result is larger than the broker accepts in one message."""

    code = wire.TASK_FAILED


class TaskError(ZerotaskError):
    """The task raised. ``type``, ``message`` and ``traceback`` describe the remote exception."""

    code = wire.TASK_FAILED

    def __init__(self, message: str = "", data: Any = None) -> None:
        super().__init__(message, data)
        details = data if isinstance(data, dict) else {}
        self.type: str = str(details.get("type", "Exception"))
        self.remote_message: str = str(details.get("message", message))
        self.traceback: str = str(details.get("traceback", ""))

    def __str__(self) -> str:
        return f"{self.type}: {self.remote_message}"


_BY_CODE: dict[int, type[ZerotaskError]] = {
    cls.code: cls
    for cls in (ProtocolError, UnknownMethod, InvalidParams, UnknownTask, TaskTimeout, NotReady, TaskRevoked, QueueFull)
    + (Forbidden, StoreUnavailable, TaskError)
}


def from_error_object(error: dict[str, Any]) -> ZerotaskError:
    """The exception for a JSON-RPC error object received from a peer."""
    code = error.get("code")
    message = str(error.get("message", ""))
    data = error.get("data")
    cls = _BY_CODE.get(code) if isinstance(code, int) else None
    if cls is None:
        return RemoteError(code if isinstance(code, int) else jsonrpc.INTERNAL_ERROR, message, data)
    return cls(message, data)


def task_error_object(exc: BaseException, traceback_text: str) -> dict[str, Any]:
    """The error object a worker sends when a task raised ``exc``; it always encodes as JSON. The message
    is best effort: ``<unprintable T>`` when ``str(exc)`` raises, and lone surrogates (which UTF-8 cannot
    carry) are written as ``\\udXXX`` escapes, in the message, the type name and the traceback."""
    type_name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        type_name = f"{module}.{type_name}"
    type_name = _encodable(type_name)
    try:
        message = _encodable(str(exc))
    except BaseException:  # a broken __str__ must not lose the error it describes
        message = f"<unprintable {type_name}>"
    return jsonrpc.error_object(
        wire.TASK_FAILED,
        f"{type_name}: {message}",
        {"type": type_name, "message": message, "traceback": _encodable(traceback_text)},
    )


def _encodable(text: str) -> str:
    """``text`` with lone surrogates written as backslash escapes, so that it encodes as UTF-8 JSON."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
