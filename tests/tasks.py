"""Tasks the tests run on real nodes (`zerotask node tests.tasks`)."""

from __future__ import annotations

import os
import time
from typing import Any

from zerotask import task


@task
def add(a: float, b: float) -> float:
    return a + b


@task
def subtract(minuend: float, subtrahend: float) -> float:
    return minuend - subtrahend


@task(name="namespaces.are.awesome.foo")
def foo(value: Any = "foo") -> Any:
    return value


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def pid() -> int:
    return os.getpid()


@task
def hold(seconds: float) -> dict[str, Any]:
    """Sleep, then say which worker ran when: for tests of how tasks are spread."""
    started = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "ppid": os.getppid(), "started": started, "ended": time.time()}


@task
def crash(code: int) -> None:
    os._exit(code)


@task
def not_json() -> object:
    return object()


@task
def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


# The methods of the JSON-RPC 2.0 specification's section 7 examples.
@task(name="sum")
def sum_(*values: float) -> float:
    return sum(values)


@task
def notify_hello(*values: Any) -> None:
    return None


@task
def notify_sum(*values: float) -> float:
    return sum(values)


@task
def update(*values: Any) -> None:
    return None


@task
def get_data() -> list[Any]:
    return ["hello", 5]


@task
def add_one(value: float) -> float:
    return value + 1


@task(name="tests.pairs")
def pairs(text: str) -> list[list[Any]]:
    return [[word, 1] for word in text.split()]


@task
def sum_values(key: Any, values: list[float]) -> float:
    return sum(values)
