"""Dispatcher: a registry of named tasks, and the one function that runs a call against it."""

from __future__ import annotations

import inspect
import traceback
from typing import Any

from zerotask import jsonrpc
from zerotask.exceptions import InvalidParams, UnknownMethod, task_error_object
from zerotask.task import Task


class Dispatcher:
    """Maps task names to :class:`Task` values."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> None:
        self._tasks[task.name] = task

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run task ``name``; raises UnknownMethod, InvalidParams, or whatever the task raises."""
        found = self._tasks.get(name)
        if found is None:
            raise UnknownMethod(f"Method not found: {name}")
        try:
            return found.function(*args, **kwargs)
        except TypeError as error:
            # Binding the arguments is checked only now, off the hot path: if they do not fit the
            # signature the function never ran, and the caller sent wrong params.
            try:
                inspect.signature(found.function).bind(*args, **kwargs)
            except TypeError:
                raise InvalidParams(f"Invalid params for {name}: {error}") from None
            raise

    def run(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """Run a task and never raise: ``(result, None)`` on success, ``(None, error object)`` otherwise."""
        try:
            return self.call(name, args, kwargs), None
        except (UnknownMethod, InvalidParams) as error:
            return None, error.to_error_object()
        except Exception as error:  # the task's own failure travels to the caller
            failure = task_error_object(error, traceback.format_exc())
            found = self._tasks.get(name)
            failure["data"]["retryable"] = found is not None and found.options.retryable(error)
            return None, failure

    def dispatch(self, request: jsonrpc.Request) -> dict[str, Any] | None:
        """One JSON-RPC request in, its response out (None for a notification)."""
        args, kwargs = split_params(request.params)
        value, error = self.run(request.method, args, kwargs)
        if request.is_notification:
            return None
        if error is not None:
            return jsonrpc.error(request.id, error)
        return jsonrpc.result(request.id, value)


def split_params(params: jsonrpc.Params) -> tuple[list[Any], dict[str, Any]]:
    """JSON-RPC params are positional (an array) or named (an object)."""
    if isinstance(params, dict):
        return [], params
    return params, {}


default_dispatcher = Dispatcher()
