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
import re
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from zerotask.exceptions import InvalidParams, UnknownMethod, task_error_object
from zerotask.wire import MAX_PRIORITY, QUEUE_NAME

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
    queue: str | None = None  # the queue its tasks wait in when the caller names none (the default queue)
    priority: int | None = None  # 0 to 9, when the caller gives none (0)
    rate_limit: str | None = None  # "100/s", "10/m", "5/h": the broker hands out no more, for all nodes
    unique_for_s: float | None = None  # at most one queued-or-running task per arguments, for so long
    every_s: float | None = None  # periodic: the broker runs it every so many seconds
    cron: str | None = None  # periodic: the broker runs it when this cron expression matches (UTC)
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
    queue: str | None = None,
    priority: int | None = None,
    rate_limit: str | None = None,
    unique_for: float | None = None,
    every: float | None = None,
    cron: str | None = None,
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
    queue: str | None = None,
    priority: int | None = None,
    rate_limit: str | None = None,
    unique_for: float | None = None,
    every: float | None = None,
    cron: str | None = None,
    pool: PoolKind | None = None,
    dispatcher: Dispatcher | None = None,
) -> Any:
    """Register ``function`` as a task named ``name`` (default: the function's own name).

    ``time_limit``, ``retry_backoff`` and ``retry_backoff_max`` are in seconds. ``queue`` and ``priority``
    (0 to 9) are where its tasks wait and how soon they go when the caller says nothing (nodes announce
    them to the broker when they connect). ``every`` (seconds) or ``cron`` (an expression, UTC) make it
    periodic: the broker runs it, without arguments, once per period however many nodes serve it.
    ``rate_limit`` (``"100/s"``, ``"10/m"``, ``"5/h"``) caps how many of its tasks the broker hands out, to
    all nodes together. ``unique_for`` (seconds): while a task of this name and these arguments is queued
    or running (for at most that long), another call with the same arguments gets that task instead.
    ``pool`` ("process" or "thread") runs the task in that kind of worker whatever the node's own kind
    (``zerotask node --pool``): "process" for isolation and hard time limits, "thread" for I/O-bound work
    with the lowest latency. ``timeout`` is the old spelling of ``time_limit`` (deprecated: a timeout is
    how long a caller waits). Raises ValueError for options no task could use.
    """
    if timeout is not None:
        warnings.warn("@task(timeout=...) is deprecated: use time_limit=...", DeprecationWarning, stacklevel=2)
        time_limit = timeout if time_limit is None else time_limit
    if retries < 0 or not _finite(retry_backoff, retry_backoff_max) or retry_backoff < 0 or retry_backoff_max < 0:
        raise ValueError("retries and the retry backoffs must be finite and not negative")
    if time_limit is not None and not (_finite(time_limit) and time_limit > 0):
        raise ValueError("time_limit must be a positive number of seconds")
    if queue is not None and not QUEUE_NAME.fullmatch(queue):
        raise ValueError("a queue name has 1 to 64 letters, digits, '_', '.', ':' or '-'")
    if priority is not None and not (type(priority) is int and 0 <= priority <= MAX_PRIORITY):
        raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}")
    if rate_limit is not None and parse_rate(rate_limit) is None:
        raise ValueError(f"a rate limit is a number of tasks per s, m or h, e.g. '100/s': not {rate_limit!r}")
    if unique_for is not None and not (_finite(unique_for) and unique_for > 0):
        raise ValueError("unique_for must be a positive number of seconds")
    if every is not None and cron is not None:
        raise ValueError("a periodic task runs every so many seconds or by cron, not both")
    if every is not None and not (_finite(every) and every >= 0.1):
        raise ValueError("every must be at least 0.1 seconds")
    if cron is not None and (problem := cron_problem(cron)) is not None:
        raise ValueError(problem)
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}")
    options = TaskOptions(
        retries=retries,
        retry_on=tuple(retry_on),
        retry_backoff_s=retry_backoff,
        retry_backoff_max_s=retry_backoff_max,
        time_limit_s=time_limit,
        queue=queue,
        priority=priority,
        rate_limit=rate_limit,
        unique_for_s=unique_for,
        every_s=every,
        cron=cron,
        pool=pool,
    )
    target = dispatcher if dispatcher is not None else default_dispatcher

    def register(fn: F) -> F:
        target.register(Task(name or fn.__name__, fn, options))
        return fn

    if function is not None:
        return register(function)
    return register


RATE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*")
_PER_S = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: Any) -> float | None:
    """Tasks per second of a rate limit, ``"100/s"``, ``"10/m"``, ``"5/h"`` or ``"100"`` (per second);
    None if it is not one, or not above zero."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    match = RATE.fullmatch(text)
    if match is None:
        return None
    rate = float(match[1]) / _PER_S[match[2]]
    return rate if rate > 0 else None


def split_params(params: list[Any] | dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """JSON-RPC params are positional (an array) or named (an object)."""
    if isinstance(params, dict):
        return [], params
    return params, {}


def cron_problem(cron: Any) -> str | None:
    """What is wrong with a cron expression, or None: it must be five fields (no ``@hourly``) that croniter
    reads and that match some day (croniter accepts ``0 0 30 2 *``, then never finds a slot). The decorator
    refuses such an expression, and the broker ignores it in what a node announces."""
    from croniter import croniter  # only for a task that uses it

    if not isinstance(cron, str) or len(cron) > 256 or len(cron.split()) != 5 or not croniter.is_valid(cron):
        return f"not a cron expression of five fields (minute hour day month weekday): {cron!r}"
    try:
        croniter(cron).get_next(float)
    except Exception as error:  # croniter's CroniterBadDateError and kin: it never matches
        return f"the cron expression {cron!r} never matches: {error}"
    return None


def _finite(*values: float) -> bool:
    return all(isinstance(value, int | float) and math.isfinite(value) for value in values)
