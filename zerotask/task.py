"""``@task``: register a function under a name in a dispatcher, with its delivery options.

The decorator returns the function unchanged, so it can still be called locally and keeps its type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is delivered. ``retries`` extra attempts after a failure (only for exceptions in
    ``retry_on``, or any exception when it is empty), waiting ``retry_backoff_s * 2**(attempt - 1)`` seconds
    (capped at ``retry_backoff_max_s``); ``timeout_s`` kills a run that takes longer."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    timeout_s: float | None = None

    def to_wire(self) -> dict[str, Any]:
        """The options as the node announces them to the broker (those that differ from the default).
        ``retry_on`` stays home: the worker, which has the exception, decides whether it is retryable."""
        wire: dict[str, Any] = {}
        default = TaskOptions()
        for name in ("retries", "retry_backoff_s", "retry_backoff_max_s", "timeout_s"):
            value = getattr(self, name)
            if value != getattr(default, name):
                wire[name] = value
        return wire

    def retryable(self, error: BaseException) -> bool:
        """Whether the retry policy covers this exception (attempts left are the broker's to count)."""
        return self.retries > 0 and (not self.retry_on or isinstance(error, self.retry_on))


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    function: Callable[..., Any]
    options: TaskOptions = field(default_factory=TaskOptions)


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
    timeout: float | None = None,
    dispatcher: Any = None,
) -> Callable[[F], F]: ...


def task(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | list[type[BaseException]] = (),
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    timeout: float | None = None,
    dispatcher: Any = None,
) -> Any:
    """Register ``function`` as a task named ``name`` (default: the function's own name).

    ``timeout`` and ``retry_backoff`` are in seconds. ``dispatcher`` defaults to the process-wide
    :data:`zerotask.dispatcher.default_dispatcher`, which Node, Worker and Broker use unless given another.
    """
    from zerotask.dispatcher import default_dispatcher

    options = TaskOptions(
        retries=retries,
        retry_on=tuple(retry_on),
        retry_backoff_s=retry_backoff,
        retry_backoff_max_s=retry_backoff_max,
        timeout_s=timeout,
    )
    target = dispatcher if dispatcher is not None else default_dispatcher

    def register(fn: F) -> F:
        target.register(Task(name or fn.__name__, fn, options))
        return fn

    if function is not None:
        return register(function)
    return register
