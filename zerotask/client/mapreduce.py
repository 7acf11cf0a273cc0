"""AsyncMapReduce: the seed's map-reduce, with registered tasks in place of shipped code.

JSON carries no functions, so both steps are task names: the map task gets one input and returns a
list of ``[key, value]`` pairs; the reduce task gets ``(key, values)`` and returns one value. Map and
reduce tasks are ordinary tasks, so the broker spreads them over every node that serves them. The map step
streams (at most ``window`` map tasks at a time, over inputs of any length); the reduce step is a
:func:`zerotask.canvas.group` per thousand keys, which the broker holds and runs as a workflow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator
from typing import Any

from zerotask.canvas import group, sig
from zerotask.client.aio import AsyncClient
from zerotask.client.calls import DEFAULT_ENDPOINT
from zerotask.exceptions import TaskError, TaskTimeout

REDUCE_GROUP = 1000  # reduce tasks in one workflow (the broker takes up to 10,000 members)


class AsyncMapReduce:
    """``AsyncMapReduce(endpoint).call(map="wc.map", reduce="wc.reduce", inputs=lines).wait()``."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, client: AsyncClient | None = None, window: int = 1000) -> None:
        self._own_client = client is None
        self.client = client if client is not None else AsyncClient(endpoint)
        self.window = window

    def call(self, map: str, reduce: str, inputs: Iterable[Any]) -> MapReduceJob:  # noqa: A002 - the seed's names
        """Start the job; returns at once. At most ``window`` map tasks are outstanding at a time."""
        return MapReduceJob(self.client, map, reduce, iter(inputs), self.window)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> AsyncMapReduce:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MapReduceJob:
    """A running map-reduce: ``.wait(timeout)`` / ``.result(timeout)`` give the ``{key: value}`` dict,
    ``.callback(fn)`` calls ``fn(dict)`` once it is ready (at once if it is), ``await job`` works too."""

    def __init__(self, client: AsyncClient, map_method: str, reduce_method: str, inputs: Iterator[Any], window: int) -> None:
        self._client = client
        self._map_method = map_method
        self._reduce_method = reduce_method
        self._inputs = inputs
        self._outcome: concurrent.futures.Future[dict[Any, Any]] = concurrent.futures.Future()
        # Callbacks run in the client's thread, or in ours (re-entering) for a task already finished.
        self._lock = threading.RLock()
        self._groups: dict[Hashable, list[Any]] = {}
        self._maps_running = 0
        self._reduced: dict[Hashable, Any] = {}
        self._reduces_running = 0
        with self._lock:
            self._feed(max(window, 1))

    # ---- the map step ----------------------------------------------------------------------------

    def _feed(self, count: int) -> None:
        """Submit up to ``count`` more map tasks (called with the lock held)."""
        for item in itertools.islice(self._inputs, count):
            self._maps_running += 1
            self._client.call(self._map_method, item).callback(self._on_mapped, self._fail)
        if self._maps_running == 0:  # every input mapped
            self._start_reduce()

    def _on_mapped(self, pairs: Any) -> None:
        with self._lock:
            if self._outcome.done():
                return
            self._maps_running -= 1
            try:
                for key, value in pairs:
                    self._groups.setdefault(_hashable(key), []).append(value)
            except (TypeError, ValueError):
                self._fail(TaskError(f"{self._map_method} must return a list of [key, value] pairs, not {pairs!r}"))
                return
            self._feed(1)

    # ---- the reduce step -------------------------------------------------------------------------

    def _start_reduce(self) -> None:
        if not self._groups:
            self._settle({})
            return
        # The reduce step is workflows the broker runs (zerotask.canvas): a group of reduce tasks per
        # REDUCE_GROUP keys, whose results come back in key order.
        items = list(self._groups.items())
        self._groups = {}
        chunks = [items[start : start + REDUCE_GROUP] for start in range(0, len(items), REDUCE_GROUP)]
        self._reduces_running = len(chunks)
        for chunk in chunks:
            reduces = group(*(sig(self._reduce_method, key, values) for key, values in chunk))
            handle = self._client.apply_async(reduces)
            handle.callback(functools.partial(self._on_reduced, [key for key, _ in chunk]), self._fail)

    def _on_reduced(self, keys: list[Hashable], values: Any) -> None:
        with self._lock:
            self._reduced.update(zip(keys, values, strict=True))
            self._reduces_running -= 1
            if self._reduces_running == 0:
                self._settle(self._reduced)

    def _fail(self, error: BaseException) -> None:
        if not self._outcome.done():
            self._outcome.set_exception(error)

    def _settle(self, value: dict[Any, Any]) -> None:
        if not self._outcome.done():
            self._outcome.set_result(value)

    # ---- for the caller --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> dict[Any, Any]:
        try:
            return self._outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TaskTimeout(f"map-reduce {self._map_method}/{self._reduce_method} not done after {timeout} s") from None

    result = wait

    def done(self) -> bool:
        return self._outcome.done()

    def callback(
        self, on_result: Callable[[dict[Any, Any]], object], on_error: Callable[[BaseException], object] | None = None
    ) -> MapReduceJob:
        def settle(outcome: concurrent.futures.Future[dict[Any, Any]]) -> None:
            error = outcome.exception()
            if error is None:
                on_result(outcome.result())
            elif on_error is not None:
                on_error(error)

        self._outcome.add_done_callback(settle)
        return self

    def __await__(self) -> Generator[Any, None, dict[Any, Any]]:
        return asyncio.wrap_future(self._outcome).__await__()


def _hashable(key: Any) -> Hashable:
    """JSON has arrays where Python wants tuples for dict keys."""
    if isinstance(key, list):
        return tuple(_hashable(part) for part in key)
    if isinstance(key, dict):
        raise TypeError("a map key cannot be an object")
    return key  # type: ignore[no-any-return]
