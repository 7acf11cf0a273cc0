"""report_progress: a running task says how far it got.

Inside a task, ``report_progress(done, total=None, info=None)`` (``info``: any JSON, at most 4 KiB) goes
to the broker through the node; callers read the latest report with ``client.progress(task_id)`` or
``handle.progress()``, and event watchers see it as a ``progress`` event. It is cheap to call often:
reports of one task go out at most every THROTTLE_S (the first, and one with ``done == total``, always
go), and the broker keeps them in memory only. Outside a task (or in eager mode) it does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

THROTTLE_S = 0.2  # the shortest time between two reports of one task that go out

Sink = Callable[[dict[str, Any]], None]  # takes one report: {"task_id", "done", "total", "info"}

_current: ContextVar[tuple[str, Sink, list[float]] | None] = ContextVar("zerotask_progress", default=None)


def report_progress(done: float, total: float | None = None, info: Any = None) -> None:
    """Say how far the running task got: ``done`` of ``total`` (or of an unknown total), and ``info``."""
    current = _current.get()
    if current is None:
        return
    task_id, sink, last_sent = current
    now = time.monotonic()
    if now - last_sent[0] < THROTTLE_S and (total is None or done < total):
        return
    last_sent[0] = now
    sink({"task_id": task_id, "done": done, "total": total, "info": info})


def begin(task_id: str, sink: Sink) -> Token[tuple[str, Sink, list[float]] | None]:
    """From now on (until :func:`end` with what this returns), report_progress reports for ``task_id``
    to ``sink``: what :class:`reporting` does, without an object, for the path every task takes."""
    return _current.set((task_id, sink, [-THROTTLE_S]))


def end(token: Token[tuple[str, Sink, list[float]] | None]) -> None:
    _current.reset(token)


class reporting:  # lower case: it is used as a function, ``with reporting(...)``
    """Within, report_progress reports for ``task_id`` to ``sink`` (nowhere, if None). A class, not a
    @contextmanager: it wraps every task a worker runs, and a generator costs several times as much."""

    __slots__ = ("_task_id", "_sink", "_token")

    def __init__(self, task_id: str, sink: Sink | None) -> None:
        self._task_id, self._sink = task_id, sink
        self._token: Token[tuple[str, Sink, list[float]] | None] | None = None

    def __enter__(self) -> None:
        if self._sink is not None:
            self._token = begin(self._task_id, self._sink)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            end(self._token)
