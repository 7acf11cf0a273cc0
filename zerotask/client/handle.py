"""TaskHandle: a task submitted by an AsyncClient, usable blocking, with callbacks, or with ``await``.

A handle is settled once, from the client's I/O thread, and read from any thread. It is lighter than a
``concurrent.futures.Future`` (no lock or condition per task until someone actually waits), because a
client may hold tens of thousands of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import Any

from zerotask.client.calls import ControlAPI
from zerotask.exceptions import TaskTimeout

_LOCK = threading.Lock()  # guards the rare moment a waiter or callback meets a settling handle
_PENDING: Any = object()


class TaskHandle:
    """What ``AsyncClient.add(5, 6)`` returns at once: ``.id``, ``.status()``, ``.result()`` / ``.wait()``,
    ``.done()``, ``.callback()``, ``.revoke()``; and ``await handle`` inside a running event loop."""

    __slots__ = ("id", "method", "_client", "_result", "_error", "_event", "_callbacks")

    def __init__(self, client: ControlAPI, task_id: str, method: str) -> None:
        self.id = task_id
        self.method = method
        self._client = client
        self._result: Any = _PENDING
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[TaskHandle], None]] | None = None

    # ---- for the caller --------------------------------------------------------------------------

    def status(self, timeout: float | None = None) -> str:
        """The broker's state for the task: QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED or REVOKED."""
        return self._client.status(self.id, timeout)

    def progress(self, timeout: float | None = None) -> dict[str, Any] | None:
        """What the task last reported of how far it got (``{"done", "total", "info"}``), or None."""
        return self._client.progress(self.id, timeout)

    def revoke(self, timeout: float | None = None) -> str:
        """Revoke the task: queued, it never runs; running, its worker is stopped. Returns the state."""
        return self._client.revoke(self.id, timeout)

    def done(self) -> bool:
        return self._result is not _PENDING

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None: no limit) and return the result; raises TaskError,
        UnknownMethod..., or TaskTimeout if the time runs out first (the task goes on)."""
        if self._result is _PENDING:
            with _LOCK:
                if self._result is _PENDING and self._event is None:
                    self._event = threading.Event()
            if self._event is not None and not self._event.wait(timeout):
                raise TaskTimeout(f"task {self.id} ({self.method}) has no result after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    wait = result

    def callback(
        self, on_result: Callable[[Any], object], on_error: Callable[[BaseException], object] | None = None
    ) -> TaskHandle:
        """Call ``on_result(result)`` once when the task finishes (at once if it already has), or
        ``on_error(exception)`` if it fails. Callbacks run in the client's I/O thread: keep them short."""

        def settle(handle: TaskHandle) -> None:
            if handle._error is None:
                on_result(handle._result)
            elif on_error is not None:
                on_error(handle._error)

        self._when_done(settle)
        return self

    def __await__(self) -> Generator[Any, None, Any]:
        if self._result is _PENDING:
            loop = asyncio.get_running_loop()
            waiting: asyncio.Future[None] = loop.create_future()

            def wake(_: TaskHandle) -> None:
                loop.call_soon_threadsafe(_resolve, waiting)

            self._when_done(wake)
            yield from waiting.__await__()
        return self.result()

    def __repr__(self) -> str:
        return f"<TaskHandle {self.method} {self.id} {'done' if self.done() else 'pending'}>"

    # ---- for the client's I/O thread -------------------------------------------------------------

    def _when_done(self, callback: Callable[[TaskHandle], None]) -> None:
        with _LOCK:
            if self._result is _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def _settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (the first one only) and wake whoever waits."""
        with _LOCK:
            if self._result is not _PENDING:
                return
            self._error = error
            self._result = result
            event, callbacks = self._event, self._callbacks
            self._callbacks = None
        if event is not None:
            event.set()
        for callback in callbacks or ():
            callback(self)


def _resolve(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():  # the awaiting task may have been cancelled
        waiting.set_result(None)
