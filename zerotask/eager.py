"""EagerClient: runs tasks at once, in the caller's process, behind the control API of Client (what
Celery calls ``task_always_eager``). For unit tests: no broker, no node, no sockets.

``EagerClient().add(2, 3) == 5`` once the module that defines ``add`` is imported. Arguments and results
cross JSON as they would cross the wire (a tuple comes back a list; a result that is not JSON fails the
task with a TypeError, as a worker reports it), and errors are the exceptions a Client raises. What
eager mode cannot show: time limits (nothing stops a task), retry backoffs (a retry runs at once), a
worker's death, and isolation (a task runs in the caller's process and shares its state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zerotask import __version__, jsonrpc, wire
from zerotask.client.calls import TaskMethod, new_task_id
from zerotask.exceptions import UnknownMethod, UnknownTask, from_error_object
from zerotask.task import Dispatcher, default_dispatcher


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: str  # FINISHED or FAILED
    result: Any = None
    error: dict[str, Any] | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise from_error_object(self.error)
        return self.result


class EagerClient:
    """Runs each task when it is called or submitted, through ``dispatcher`` (by default
    :data:`zerotask.task.default_dispatcher`, which ``@task`` fills), and keeps the outcome of each
    submitted task for :meth:`status`, :meth:`result` and :meth:`revoke`.

    ``call`` returns the result or raises (TaskError, InvalidParams, UnknownMethod); ``submit`` raises
    UnknownMethod at once for a name the dispatcher lacks, and otherwise returns an id whose task has
    already ended. ``timeout`` arguments are accepted, for the same signatures as Client, and unused.
    """

    def __init__(self, dispatcher: Dispatcher | None = None) -> None:
        self.dispatcher = dispatcher if dispatcher is not None else default_dispatcher
        self.endpoint = "eager"
        self._outcomes: dict[str, _Outcome] = {}

    def __getattr__(self, name: str) -> TaskMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return TaskMethod(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run task ``method`` now and return its result; raises what a Client would."""
        return self._run(method, args, kwargs).value()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> str:
        """Run task ``method`` now and return a task id for its outcome (FINISHED or FAILED)."""
        outcome = self._run(method, args, kwargs)
        task_id = new_task_id()
        self._outcomes[task_id] = outcome
        return task_id

    def status(self, task_id: str, timeout: float | None = None) -> str:
        """FINISHED or FAILED; raises UnknownTask for an id this client did not return."""
        return self._find(task_id).state

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's result, or its error raised (TaskError, InvalidParams)."""
        return self._find(task_id).value()

    def revoke(self, task_id: str, timeout: float | None = None) -> str:
        """The state the task reached: it ended before it could be revoked, as a broker would answer."""
        return self._find(task_id).state

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """``{"version", "eager": True, "tasks": the names the dispatcher serves}``."""
        return {"version": __version__, "eager": True, "tasks": self.dispatcher.names()}

    def close(self) -> None:
        """Forget the outcomes of submitted tasks."""
        self._outcomes.clear()

    def __enter__(self) -> EagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _find(self, task_id: str) -> _Outcome:
        outcome = self._outcomes.get(task_id)
        if outcome is None:
            raise UnknownTask(f"unknown task id {task_id!r}", {"task_id": task_id})
        return outcome

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Outcome:
        if method not in self.dispatcher:
            # As the broker answers when no node serves the name: the specification's message, the name in data.
            raise UnknownMethod(jsonrpc.ERROR_MESSAGES[jsonrpc.METHOD_NOT_FOUND], {"method": method})
        # Through JSON, as a Client sends them: arguments that are not JSON raise here as they would there.
        sent_args, sent_kwargs = jsonrpc.loads(jsonrpc.dumps([list(args), kwargs]))
        attempt = 0
        while True:
            result, error = self.dispatcher.run(method, sent_args, sent_kwargs, attempt)
            if error is None:
                return _received(method, result)
            data = error.get("data")
            if not (isinstance(data, dict) and "retry_in_s" in data):
                return _Outcome(wire.FAILED, error=error)
            attempt += 1  # the task's own policy allows another attempt: run it now, without the backoff


def _received(method: str, result: Any) -> _Outcome:
    """The outcome a caller receives for ``result``: decoded from JSON, or the worker's TypeError when it
    is not JSON (zerotask.node.worker reports it so)."""
    try:
        encoded = jsonrpc.dumps(result)
        if jsonrpc.deeper_than(encoded, result, jsonrpc.MAX_DEPTH):
            raise TypeError(f"it nests more than {jsonrpc.MAX_DEPTH} levels deep")
    except TypeError as problem:  # orjson's JSONEncodeError is one
        message = f"the result of {method} is not JSON: {problem}"
        error = jsonrpc.error_object(
            wire.TASK_FAILED, f"TypeError: {message}", {"type": "TypeError", "message": message, "traceback": ""}
        )
        return _Outcome(wire.FAILED, error=error)
    return _Outcome(wire.FINISHED, result=jsonrpc.loads(encoded))
