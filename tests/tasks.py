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


# ---- for the fault-tolerance tests ---------------------------------------------------------------


def _count_attempt(path: str) -> int:
    """Append a line to ``path`` and return how many lines it has: the attempts so far."""
    with open(path, "a") as attempts:
        attempts.write("x\n")
    with open(path) as attempts:
        return len(attempts.readlines())


@task(retries=3, retry_backoff=0.2)
def flaky(path: str, failures: int) -> int:
    """Fails ``failures`` times, then returns the attempt number."""
    attempt = _count_attempt(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} fails")
    return attempt


@task(retries=3, retry_backoff=0.05, retry_on=(ConnectionError,))
def wrong_error(path: str) -> None:
    _count_attempt(path)
    raise KeyError("not a ConnectionError: no retry")


@task(time_limit=0.5)
def overrun(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(retries=1, retry_backoff=0.1)
def survive_kill(path: str) -> str:
    """First attempt: leave our pid in ``path`` and wait to be killed. Second: succeed."""
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as pid_file:
            pid_file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(60)
        return "first"
    return "second"


@task
def pid_then_sleep(path: str, seconds: float) -> int:
    with open(path + ".tmp", "w") as pid_file:
        pid_file.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return os.getpid()


@task
def touch(path: str) -> str:
    with open(path, "w") as marker:
        marker.write("ran")
    return path


@task
def slow_add(a: float, b: float, seconds: float) -> float:
    time.sleep(seconds)
    return a + b


@task
def text(size: int) -> str:
    return "x" * size


@task
def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@task
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


@task
def append(path: str, line: str) -> str:
    """Append a line to a file: the order tasks ran in, for the priority tests."""
    with open(path, "a") as lines:
        lines.write(line + "\n")
    return line


@task(queue="io", priority=5)
def io_add(a: float, b: float) -> float:
    """A task whose own defaults send it to the queue "io"."""
    return a + b


@task(rate_limit="5/s")
def limited(n: int) -> float:
    """A task the broker hands out at most 5 times a second, to all nodes together."""
    return time.time()


@task(unique_for=30)
def unique_sleep(seconds: float, label: str = "") -> float:
    """At most one queued or running task per arguments (for 30 s)."""
    time.sleep(seconds)
    return seconds


@task
def count_up(steps: int, pause_s: float) -> int:
    """Report progress at every step: done of steps, with the step's name."""
    from zerotask import report_progress

    for step in range(1, steps + 1):
        time.sleep(pause_s)
        report_progress(step, steps, {"step": f"s{step}"})
    return steps


@task
async def count_up_async(steps: int, pause_s: float) -> int:
    import asyncio

    from zerotask import report_progress

    for step in range(1, steps + 1):
        await asyncio.sleep(pause_s)
        report_progress(step, steps)
    return steps


_HELD_MEMORY: list[bytearray] = []


@task
def keep_memory(megabytes: int) -> int:
    """Grow this worker by ``megabytes`` for good (recycling tests); returns its pid."""
    _HELD_MEMORY.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


# ---- for the workflow (canvas) tests -------------------------------------------------------------


@task
def mul(a: float, b: float) -> float:
    return a * b


@task
def tsum(values: list[float]) -> float:
    return sum(values)


@task
def tsum_counted(values: list[float], path: str) -> float:
    """A chord callback that leaves a line in ``path`` each time it runs: how often it ran."""
    _count_attempt(path)
    return sum(values)
