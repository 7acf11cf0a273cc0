"""AsyncClient: submits tasks without waiting, and has their outcomes pushed to it.

``AsyncClient("tcp://127.0.0.1:5555").add(5, 6)`` returns a :class:`TaskHandle` at once; its I/O runs
in one background thread (:mod:`zerotask.client.connection`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from zerotask import auth, failover, jsonrpc, wire
from zerotask.canvas import Canvas
from zerotask.client import calls
from zerotask.client.calls import DEFAULT_ENDPOINT, TaskMethod, apply_request, call_params
from zerotask.client.connection import BrokerConnection
from zerotask.client.handle import TaskHandle
from zerotask.exceptions import TaskTimeout, UnknownTask, ZerotaskError

WORKFLOW_SUBMITS = 3  # times a workflow is started again when the broker lost it (a memory store restarted)


class AsyncClient:
    """Submits tasks without waiting: ``client.add(5, 6)`` returns a :class:`TaskHandle` at once.

    One background thread and one socket serve any number of outstanding tasks; submits made in a loop
    go out together, and results are pushed by the broker as tasks finish. Handles are awaitable, so
    ``await client.add(2, 3)`` works in any running event loop. ``timeout`` (seconds) bounds the
    control calls (status, result, revoke, info) and :meth:`map`'s waits; None means no limit.

    As the :class:`Client`, it pings the broker every ``heartbeat_s`` while it waits and submits again
    what a restarted broker may have lost, or everything after ``liveness`` silent heartbeats. Given
    several brokers (``"tcp://a:5555,tcp://b:5555"``, or a list), it talks to the first and, when that
    one is gone, moves to the next and submits again there every task still waiting (``liveness`` None:
    5 with one broker, 2 with several; see :class:`Client`). Each
    message stays under the broker's size limit; a task whose arguments alone exceed it fails at once
    with :class:`~zerotask.client.connection.RequestTooLarge`. ``curve_secret`` and ``broker_key`` (by
    default ZEROTASK_CURVE_SECRET and ZEROTASK_BROKER_KEY) connect with CURVE, as for the Client.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] = DEFAULT_ENDPOINT,
        timeout: float | None = None,
        time_limit: float | None = None,
        heartbeat_s: float = 1.0,
        liveness: int | None = None,
        curve_secret: str | None = None,
        broker_key: str | None = None,
    ) -> None:
        self.brokers = failover.Brokers(endpoint, backoff_s=heartbeat_s)
        self.timeout = timeout
        self.time_limit = time_limit
        liveness = calls.liveness(liveness, len(self.brokers.endpoints))
        self._connection = BrokerConnection(self.brokers, heartbeat_s, liveness, auth.peer_keys(curve_secret, broker_key))

    @property
    def endpoint(self) -> str:
        """The endpoint of the broker the client uses now."""
        return self.brokers.current

    def __getattr__(self, name: str) -> TaskMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return TaskMethod(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> TaskHandle:
        """Submit task ``method``; returns its handle at once."""
        params = call_params(method, args, kwargs, self.time_limit)
        params["notify"] = True
        handle = TaskHandle(self, params["task_id"], method)
        self._connection.submit(params, handle)
        return handle

    submit = call

    def apply_async(
        self,
        method: str | Canvas,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        time_limit: float | None = None,
    ) -> TaskHandle:
        """Queue task ``method`` with delivery options (:meth:`zerotask.client.ControlAPI.apply_async`),
        or start a workflow (:mod:`zerotask.canvas`); returns its handle at once."""
        limit = self.time_limit
        request, params = apply_request(method, args, kwargs, countdown, eta, queue, priority, task_id, time_limit, limit)
        if request == wire.WORKFLOW:
            handle = TaskHandle(self, params["workflow_id"], "workflow")
            _WorkflowWait(self._connection, params, handle).submit()
            return handle
        params["notify"] = True
        handle = TaskHandle(self, params["task_id"], params["method"])
        self._connection.submit(params, handle)
        return handle

    def status(self, task_id: str, timeout: float | None = None) -> str:
        """The state of any task this broker knows; raises UnknownTask otherwise."""
        state: str = self._control(wire.STATUS, {"task_id": task_id}, timeout)
        return state

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the result of any task by id (also one submitted by another client)."""
        limit = self.timeout if timeout is None else timeout
        params: dict[str, Any] = {"task_id": task_id, "wait": True}
        if limit is not None:
            params["timeout_s"] = limit
        return self._control(wire.RESULT, params, limit)

    def progress(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """What the running task last reported (:func:`zerotask.report_progress`), or None."""
        progress: dict[str, Any] | None = self._control(wire.PROGRESS, {"task_id": task_id}, timeout)
        return progress

    def revoke(self, task_id: str, timeout: float | None = None) -> str:
        """Revoke a task (see :meth:`Client.revoke`); its handle then raises TaskRevoked."""
        state: str = self._control(wire.REVOKE, {"task_id": task_id}, timeout)
        return state

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        info: dict[str, Any] = self._control(wire.INFO, {}, timeout)
        return info

    def _control(self, method: str, params: jsonrpc.Params, timeout: float | None) -> Any:
        answer = self._connection.call(method, params)
        limit = timeout if timeout is not None else self.timeout
        try:
            return answer.result(limit)
        except concurrent.futures.TimeoutError:
            if not self._connection.answered:
                hint = "if it requires CURVE, check curve_secret and broker_key (or ZEROTASK_CURVE_SECRET, ZEROTASK_BROKER_KEY)"
                raise TaskTimeout(f"no answer from the broker within {limit} s: {hint}") from None
            raise TaskTimeout(f"no answer to {method} within {limit} s") from None

    def map(self, method: str, inputs: Iterable[Any], window: int = 1000) -> Iterator[Any]:
        """Run ``method(item)`` for each item; yield the results in input order as they come.

        Streams: at most ``window`` tasks are outstanding, so the first result arrives long before a
        large (or endless) ``inputs`` has been submitted. A failed task raises when its turn comes.
        """
        return self.starmap(method, ((item,) for item in inputs), window)

    def starmap(self, method: str, inputs: Iterable[Iterable[Any]], window: int = 1000) -> Iterator[Any]:
        """Like :meth:`map`, with each item unpacked into positional arguments."""
        source = iter(inputs)
        in_flight: collections.deque[TaskHandle] = collections.deque(
            self.call(method, *args) for args in itertools.islice(source, max(window, 1))
        )
        while in_flight:
            head = in_flight.popleft()
            following = next(source, None)
            if following is not None:
                in_flight.append(self.call(method, *following))
            yield head.result(self.timeout)

    @property
    def outstanding(self) -> int:
        """How many submitted tasks have no outcome yet."""
        return self._connection.outstanding

    def close(self) -> None:
        """Stop the background thread; handles still waiting fail with ConnectionClosed."""
        self._connection.close()

    def __enter__(self) -> AsyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class _WorkflowWait:
    """Starts a workflow, then waits for its outcome with zerotask.broker.result: two control calls, which
    the connection sends again after a reconnect (both are idempotent: the workflow is named). A broker
    that answers the wait with UnknownTask lost the workflow (a memory store restarted): it is started
    again, as a lost task is submitted again, up to WORKFLOW_SUBMITS times."""

    def __init__(self, connection: BrokerConnection, params: dict[str, Any], handle: TaskHandle) -> None:
        self._connection = connection
        self._params = params
        self._handle = handle
        self._submits = 0

    def submit(self) -> None:
        self._submits += 1
        self._call(wire.WORKFLOW, self._params, self._started)

    def _started(self, answer: concurrent.futures.Future[Any]) -> None:
        error = answer.exception()
        if error is not None:
            self._handle._settle(error=error)
        else:
            self._call(wire.RESULT, {"task_id": self._handle.id, "wait": True}, self._ended)

    def _ended(self, answer: concurrent.futures.Future[Any]) -> None:
        error = answer.exception()
        if isinstance(error, UnknownTask) and self._submits < WORKFLOW_SUBMITS:
            self.submit()
        elif error is not None:
            self._handle._settle(error=error)
        else:
            self._handle._settle(answer.result())

    def _call(self, method: str, params: dict[str, Any], then: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        try:
            self._connection.call(method, params).add_done_callback(then)
        except ZerotaskError as error:  # the client was closed meanwhile
            self._handle._settle(error=error)
