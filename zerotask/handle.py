"""TaskHandle: a task submitted by an AsyncClient, usable blocking, with callbacks, or with ``await``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from zerotask.exceptions import TaskTimeout

if TYPE_CHECKING:
    from zerotask.client import AsyncClient


class TaskHandle:
    """What ``AsyncClient.add(5, 6)`` returns at once: ``.id``, ``.status()``, ``.result()`` / ``.wait()``,
    ``.done()``, ``.callback()``; and ``await handle`` inside a running event loop."""

    def __init__(self, client: AsyncClient, task_id: str, method: str, outcome: concurrent.futures.Future[Any]) -> None:
        self.id = task_id
        self.method = method
        self._client = client
        self._outcome = outcome

    def status(self, timeout: float | None = None) -> str:
        """The broker's state for the task: QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED or REVOKED."""
        return self._client.status(self.id, timeout)

    def revoke(self, timeout: float | None = None) -> str:
        """Revoke the task: queued, it never runs; running, its worker is stopped. Returns the state."""
        return self._client.revoke(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None: no limit) and return the result; raises TaskError,
        UnknownMethod..., or TaskTimeout if the time runs out first (the task goes on)."""
        try:
            return self._outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TaskTimeout(f"task {self.id} ({self.method}) has no result after {timeout} s") from None

    wait = result

    def done(self) -> bool:
        return self._outcome.done()

    def callback(
        self, on_result: Callable[[Any], object], on_error: Callable[[BaseException], object] | None = None
    ) -> TaskHandle:
        """Call ``on_result(result)`` once when the task finishes (at once if it already has), or
        ``on_error(exception)`` if it fails. Callbacks run in the client's I/O thread: keep them short."""

        def settle(outcome: concurrent.futures.Future[Any]) -> None:
            error = outcome.exception()
            if error is None:
                on_result(outcome.result())
            elif on_error is not None:
                on_error(error)

        self._outcome.add_done_callback(settle)
        return self

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._outcome).__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<TaskHandle {self.method} {self.id} {state}>"
