"""Tasks for the thread pool and async tests (`zerotask node tests.tasks tests.pool_tasks --pool thread`)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from zerotask import task, tracing


def _mark(path: str, text: str = "") -> None:
    """Write ``path`` whole (a reader sees it complete or not at all)."""
    Path(path + ".tmp").write_text(text)
    os.rename(path + ".tmp", path)


@task
def where() -> dict[str, Any]:
    """Which process and thread run the node's own kind of task."""
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@task(pool="thread")
def where_thread() -> dict[str, Any]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@task(pool="process")
def where_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@task
def mark_then_sleep(path: str, seconds: float, done: str = "") -> str:
    """Mark ``path`` when started, sleep, then mark ``done`` (if given): whether it ran, and ran to the end."""
    _mark(path)
    time.sleep(seconds)
    if done:
        _mark(done)
    return "slept"


@task(time_limit=0.5)
def limited_sleep(path: str, seconds: float) -> str:
    """Sleeps past its limit; marks ``path`` when it returns anyway (a thread cannot be stopped)."""
    time.sleep(seconds)
    _mark(path)
    return "woke"


@task(time_limit=0.5, retries=1, retry_backoff=0.05)
def limited_twice(path: str) -> str:
    """Past its limit on the first attempt, quick on the retry."""
    first = not Path(path).exists()
    _mark(path)
    if first:
        time.sleep(3)
    return "second" if not first else "first"


@task
def thread_name(seconds: float = 0.0, fail: bool = False) -> str:
    """The name of the thread that ran it ("MainThread": the node's loop), after sleeping ``seconds``;
    with ``fail``, raised as a ValueError's message instead."""
    if seconds:
        time.sleep(seconds)
    name = threading.current_thread().name
    if fail:
        raise ValueError(name)
    return name


@task(time_limit=30)
def limited_thread_name() -> str:
    """Short, but with a time limit: it must always run in a thread."""
    return threading.current_thread().name


@task
def traceparent_here() -> str | None:
    return tracing.current_traceparent()


# ---- async def tasks ---------------------------------------------------------------------------


@task
async def nap(seconds: float) -> dict[str, Any]:
    """Await a sleep; say where it ran and when it started and ended (monotonic on this machine)."""
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "thread": threading.current_thread().name, "started": started, "ended": time.monotonic()}


@task
async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


@task(time_limit=0.5)
async def async_overrun(path: str, seconds: float) -> str:
    """Awaits past its limit; marks ``path`` if it ever gets to the end (it should be cancelled first)."""
    await asyncio.sleep(seconds)
    _mark(path)
    return "woke"


@task(time_limit=0.3)
async def async_blocks(seconds: float) -> str:
    """Blocks its event loop (a sync sleep): cancelling cannot reach it."""
    time.sleep(seconds)
    return "blocked"


@task
async def async_mark_then_nap(path: str, seconds: float, done: str) -> str:
    _mark(path)
    await asyncio.sleep(seconds)
    _mark(done)
    return "napped"


@task
async def async_traceparent() -> str | None:
    await asyncio.sleep(0)
    return tracing.current_traceparent()


@task(pool="thread")
async def nap_in_thread(seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@task
async def async_die(after_s: float) -> None:
    """End the worker process from an async task, the way a crash would."""
    await asyncio.sleep(after_s)
    os._exit(3)


@task
async def async_not_json() -> object:
    return object()
