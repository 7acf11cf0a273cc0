"""``@task`` and the registry it fills: the seed's Task and Dispatcher.

``@task`` registers a function under a name, with its delivery options, in a :class:`Dispatcher` (the
process-wide :data:`default_dispatcher` unless given another). The decorator returns the function
unchanged, so it can still be called locally and keeps its type. A Dispatcher runs calls against its
tasks and turns what they raise into JSON-RPC error objects. A task may be an ``async def`` function:
:meth:`Dispatcher.run_async` awaits it on the caller's event loop (a node's pools do that), and
:meth:`Dispatcher.run` runs it to completion on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from zerotask.exceptions import InvalidParams, UnknownMethod, task_error_object

F = TypeVar("F", bound=Callable[..., Any])
PoolKind = Literal["process", "thread"]
POOLS: tuple[PoolKind, ...] = ("process", "thread")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is delivered. ``retries`` extra attempts after a failure (only for exceptions in
    ``retry_on``, or any exception when it is empty), waiting ``retry_backoff_s * 2**attempt`` seconds
    (capped at ``retry_backoff_max_s``); ``time_limit_s`` kills a run that takes longer. ``pool``: the
    kind of worker a node runs it in ("process" or "thread"; None: the node's own kind)."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    time_limit_s: float | None = None
    pool: PoolKind | None = None

    def retryable(self, error: BaseException) -> bool:
        """Whether the retry policy covers this exception, attempts aside."""
        return self.retries > 0 and (not self.retry_on or isinstance(error, self.retry_on))

    def retry_in_s(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait before the next attempt after ``error`` ended attempt number ``attempt`` (0 for
        the first run), or None when the policy allows no more. The policy travels with the failure: the
        broker retries exactly when this is a number (docs/protocol.md, 4.4)."""
        if not self.retryable(error) or attempt >= self.retries:
            return None
        return min(self.retry_backoff_s * 2.0**attempt, self.retry_backoff_max_s)


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    function: Callable[..., Any]
    options: TaskOptions = field(default_factory=TaskOptions)
    is_async: bool = field(init=False)  # an ``async def`` function: its call makes a coroutine to await

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.function))


class Dispatcher:
    """Maps task names to :class:`Task` values, and runs calls against them."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> None:
        self._tasks[task.name] = task

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def tasks(self) -> list[Task]:
        return list(self._tasks.values())

    def is_async(self, name: str) -> bool:
        """Whether task ``name`` is an ``async def`` function (False for a name not registered)."""
        found = self._tasks.get(name)
        return found is not None and found.is_async

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run task ``name``; raises UnknownMethod, InvalidParams, or whatever the task raises."""
        return self._call(self._tasks.get(name), name, args, kwargs)

    def _call(self, found: Task | None, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
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

    def run(self, name: str, args: list[Any], kwargs: dict[str, Any], attempt: int = 0) -> tuple[Any, dict[str, Any] | None]:
        """Run a task and never raise: ``(result, None)`` on success, ``(None, error object)`` otherwise,
        whatever the task raises (SystemExit, KeyboardInterrupt and other BaseExceptions included: they
        end the task, not the process running it). ``attempt`` (0 on the first run) decides whether the
        error asks for a retry. An async task runs to completion on a new event loop (as in eager mode);
        called from a running event loop, that is the task's error: await :meth:`run_async` there."""
        found = self._tasks.get(name)
        if found is not None and found.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self.run_async(name, args, kwargs, attempt))
            error = RuntimeError(f"{name} is async def: inside an event loop, await Dispatcher.run_async")
            return None, self.failure(name, error, "", attempt)
        try:
            return self._call(found, name, args, kwargs), None
        except (UnknownMethod, InvalidParams) as error:
            return None, error.to_error_object()
        except BaseException as error:  # the task's own failure travels to the caller
            return None, self.failure(name, error, traceback.format_exc(), attempt)

    async def run_async(
        self, name: str, args: list[Any], kwargs: dict[str, Any], attempt: int = 0
    ) -> tuple[Any, dict[str, Any] | None]:
        """:meth:`run` for an ``async def`` task, awaited in the caller's task. Raises CancelledError only
        when the calling asyncio task is being cancelled (revoked, or past a time limit); a CancelledError
        the task raises of its own accord is its error, like any other."""
        try:
            return await self.call(name, args, kwargs), None
        except (UnknownMethod, InvalidParams) as error:
            return None, error.to_error_object()
        except asyncio.CancelledError as error:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return None, self.failure(name, error, traceback.format_exc(), attempt)
        except BaseException as error:
            return None, self.failure(name, error, traceback.format_exc(), attempt)

    def failure(self, name: str, error: BaseException, traceback_text: str, attempt: int) -> dict[str, Any]:
        """The error object for task ``name`` failing with ``error`` on attempt ``attempt``, carrying the
        task's retry decision (``data.retryable``, and ``data.retry_in_s`` when another attempt is due)."""
        failure = task_error_object(error, traceback_text)
        found = self._tasks.get(name)
        options = found.options if found is not None else TaskOptions()
        failure["data"]["retryable"] = options.retryable(error)
        retry_in_s = options.retry_in_s(error, attempt)
        if retry_in_s is not None:
            failure["data"]["retry_in_s"] = retry_in_s
        return failure


default_dispatcher = Dispatcher()


@overload
def task(function: F) -> F: ...
@overload
def task(
    function: None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | list[type[BaseException]] = (),
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    time_limit: float | None = None,
    timeout: float | None = None,
    pool: PoolKind | None = None,
    dispatcher: Dispatcher | None = None,
) -> Callable[[F], F]: ...


def task(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | list[type[BaseException]] = (),
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    time_limit: float | None = None,
    timeout: float | None = None,
    pool: PoolKind | None = None,
    dispatcher: Dispatcher | None = None,
) -> Any:
    """Register ``function`` as a task named ``name`` (default: the function's own name).

    ``time_limit``, ``retry_backoff`` and ``retry_backoff_max`` are in seconds. ``timeout`` is the old
    spelling of ``time_limit`` (deprecated: a timeout is how long a caller waits). ``pool`` ("process" or
    "thread") runs the task in that kind of worker whatever the node's own kind (``zerotask node --pool``):
    "process" for isolation and hard time limits, "thread" for I/O-bound work with the lowest latency.
    Raises ValueError for options no task could use.
    """
    if timeout is not None:
        warnings.warn("@task(timeout=...) is deprecated: use time_limit=...", DeprecationWarning, stacklevel=2)
        time_limit = timeout if time_limit is None else time_limit
    if retries < 0 or not _finite(retry_backoff, retry_backoff_max) or retry_backoff < 0 or retry_backoff_max < 0:
        raise ValueError("retries and the retry backoffs must be finite and not negative")
    if time_limit is not None and not (_finite(time_limit) and time_limit > 0):
        raise ValueError("time_limit must be a positive number of seconds")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}")
    options = TaskOptions(
        retries=retries,
        retry_on=tuple(retry_on),
        retry_backoff_s=retry_backoff,
        retry_backoff_max_s=retry_backoff_max,
        time_limit_s=time_limit,
        pool=pool,
    )
    target = dispatcher if dispatcher is not None else default_dispatcher

    def register(fn: F) -> F:
        target.register(Task(name or fn.__name__, fn, options))
        return fn

    if function is not None:
        return register(function)
    return register


def split_params(params: list[Any] | dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """JSON-RPC params are positional (an array) or named (an object)."""
    if isinstance(params, dict):
        return [], params
    return params, {}


def _finite(*values: float) -> bool:
    return all(isinstance(value, int | float) and math.isfinite(value) for value in values)
