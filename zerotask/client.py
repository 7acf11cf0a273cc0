"""Client: calls tasks through a broker and waits for their results.

``Client("tcp://127.0.0.1:5555").add(5, 6) == 11``. A Client holds one DEALER socket and is meant for
one thread; make one per thread. Attribute access builds task names, so
``client.namespaces.are.awesome.foo()`` calls the task ``namespaces.are.awesome.foo``; a task whose
name collides with a Client method (``submit``, ``status``, ``result``...) is called with
:meth:`Client.call`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from zerotask import jsonrpc
from zerotask.connection import BrokerConnection
from zerotask.exceptions import ProtocolError, TaskTimeout, from_error_object
from zerotask.handle import TaskHandle
from zerotask.server import Silence

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class Client:
    """A blocking client. ``timeout`` (seconds, None for no limit) bounds every call that waits;
    ``time_limit`` (seconds) is the default time limit of the tasks it submits (the node kills a task
    that runs longer; a task's own ``@task(timeout=...)`` applies when neither is set).

    While it waits, the client pings the broker every ``heartbeat_s``; when the broker restarts or
    stays silent for ``liveness`` heartbeats, it reconnects and asks again (calls are idempotent: the
    task id is chosen here), so a caller blocked on a result gets it after a broker restart.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float | None = None,
        time_limit: float | None = None,
        heartbeat_s: float = 1.0,
        liveness: int = 5,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.time_limit = time_limit
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._socket: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)
        self._pings = itertools.count(1)
        self._instance: str | None = None

    # ---- calling tasks ---------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run task ``method`` and return its result. Raises TaskError if it raised, UnknownMethod if no
        connected node serves it, TaskTimeout if ``self.timeout`` runs out first."""
        return self.rpc("zerotask.broker.call", call_params(method, args, kwargs, self.time_limit), self.timeout)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> str:
        """Queue task ``method`` and return its task id at once (once the broker has stored it)."""
        task_id: str = self.rpc("zerotask.broker.submit", call_params(method, args, kwargs, self.time_limit), self.timeout)
        return task_id

    def revoke(self, task_id: str) -> str:
        """Revoke a task: if queued it never runs, if running its worker is stopped. Returns the state
        afterwards (REVOKED, or the outcome it reached first). Waiting callers get TaskRevoked."""
        state: str = self.rpc("zerotask.broker.revoke", {"task_id": task_id}, self.timeout)
        return state

    def status(self, task_id: str) -> str:
        """The task's state: QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED or REVOKED.
        Raises UnknownTask for an id the broker does not know."""
        state: str = self.rpc("zerotask.broker.status", {"task_id": task_id}, self.timeout)
        return state

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None: no limit) for the task's result."""
        params: dict[str, Any] = {"task_id": task_id, "wait": True}
        if timeout is not None:
            params["timeout_s"] = timeout
        return self.rpc("zerotask.broker.result", params, timeout)

    def info(self) -> dict[str, Any]:
        """The broker's description of itself: version, publish endpoint, nodes, queued counts."""
        info: dict[str, Any] = self.rpc("zerotask.broker.info", {}, self.timeout)
        return info

    # ---- the wire --------------------------------------------------------------------------------

    def rpc(self, method: str, params: jsonrpc.Params, timeout: float | None = None) -> Any:
        """Send one JSON-RPC request to the broker and return its result (or raise its error)."""
        sock = self._connected()
        request_id = next(self._ids)
        request = jsonrpc.dumps(jsonrpc.request(method, params, request_id))
        sock.send(request)
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        last_ping = now
        silence = Silence(self.heartbeat_s, self.liveness)
        while True:
            wait_s = self.heartbeat_s if deadline is None else min(self.heartbeat_s, deadline - now)
            if sock.poll(max(0, int(wait_s * 1000))):
                response = self._parse(sock.recv())
                silence.heard()
                if response is not None and isinstance(response.id, str) and response.id.startswith("ping-"):
                    if self._broker_restarted(response):
                        sock.send(request)  # the new broker never saw it
                elif response is not None and response.id == request_id:
                    if response.error is not None:
                        raise from_error_object(response.error)
                    return response.result
                # anything else: the late answer to an earlier call that timed out
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TaskTimeout(f"no answer to {method} within {timeout} s")
            if silence.overdue():
                # Silent broker: a fresh socket (the old one may hold a dead connection), then ask again.
                self.close()
                sock = self._connected()
                sock.send(request)
            elif now - last_ping >= self.heartbeat_s:
                last_ping = now
                self._ping(sock)

    def _ping(self, sock: zmq.Socket[bytes]) -> None:
        sock.send(jsonrpc.dumps(jsonrpc.request("zerotask.broker.ping", {}, f"ping-{next(self._pings)}")))

    def _broker_restarted(self, pong: jsonrpc.Response) -> bool:
        instance = pong.result.get("instance") if isinstance(pong.result, dict) else None
        restarted = self._instance is not None and instance != self._instance
        self._instance = instance
        return restarted

    @staticmethod
    def _parse(payload: bytes) -> jsonrpc.Response | None:
        message: Any = None
        try:
            message = jsonrpc.loads(payload)
            return jsonrpc.parse_response(message)
        except jsonrpc.InvalidMessage:
            if isinstance(message, dict) and "method" in message:
                return None  # a notification: nothing this client waits for
            raise ProtocolError(f"the broker sent something that is not a JSON-RPC response: {payload[:200]!r}") from None

    def _connected(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            self._socket = zmq.Context.instance().socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
            self._ping(self._socket)  # learn which broker instance answers, to notice a restart later
        return self._socket

    def events(self, idle_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the broker's task events as they happen, each ``{"event": "queued" | "finished" |
        "failed" | "revoked" | "retry", "task_id": ..., ...}``, until ``idle_timeout`` seconds pass with
        none (None: for ever). Events are best effort: see docs/protocol.md, 1.3."""
        publish = str(self.info()["publish"])
        subscriber: zmq.Socket[bytes]
        with zmq.Context.instance().socket(zmq.SUB) as subscriber:
            subscriber.setsockopt(zmq.LINGER, 0)
            subscriber.setsockopt(zmq.SUBSCRIBE, b"")
            subscriber.connect(reachable(publish, self.endpoint))
            time.sleep(0.1)  # a SUB socket misses what is published before its subscription arrives
            timeout_ms = None if idle_timeout is None else int(idle_timeout * 1000)
            while subscriber.poll(timeout_ms):
                for item in jsonrpc.items(subscriber.recv()):
                    method = str(item.get("method", ""))
                    if method.startswith("zerotask.event."):
                        yield {"event": method.removeprefix("zerotask.event."), **(item.get("params") or {})}

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_ID_PREFIX = ""
_ID_COUNTER = itertools.count(1)
_ID_PID = -1


def new_task_id() -> str:
    """A task id unique across clients: 80 random bits for this process, then a counter (cheaper than
    a uuid4 per task, which costs a system call). A forked child draws its own random part."""
    global _ID_PREFIX, _ID_PID
    if os.getpid() != _ID_PID:  # drawn on first use, not at import
        _ID_PREFIX, _ID_PID = uuid.uuid4().hex[:20], os.getpid()
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def reachable(bound: str, via: str) -> str:
    """The address of an endpoint the broker bound to a wildcard (``tcp://*:5556`` reads back as
    ``tcp://0.0.0.0:5556``), as seen from a client that reached the broker at ``via``."""
    for wildcard in ("0.0.0.0", "*", "[::]"):
        prefix = f"tcp://{wildcard}:"
        if bound.startswith(prefix) and via.startswith("tcp://"):
            host = via[len("tcp://") :].rsplit(":", 1)[0]
            return f"tcp://{host}:{bound[len(prefix) :]}"
    return bound


def call_params(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], time_limit: float | None = None) -> dict[str, Any]:
    """The params of zerotask.broker.submit / call for one task. The client names the task, so that a
    call it repeats (after a lost reply, or a broker restart) finds the same task instead of a new one."""
    params: dict[str, Any] = {"method": method, "args": list(args), "kwargs": kwargs, "task_id": new_task_id()}
    if time_limit is not None:
        params["time_limit_s"] = time_limit
    return params


class AsyncClient:
    """Submits tasks without waiting: ``client.add(5, 6)`` returns a :class:`TaskHandle` at once.

    One background thread and one socket serve any number of outstanding tasks; submits made in a loop
    go out together, and results are pushed by the broker as tasks finish. Handles are awaitable, so
    ``await client.add(2, 3)`` works in any running event loop. ``timeout`` (seconds) bounds the
    control calls (status, info) and :meth:`map`'s waits; None means no limit.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float | None = None, time_limit: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.time_limit = time_limit
        self._connection = BrokerConnection(endpoint)

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> TaskHandle:
        """Submit task ``method``; returns its handle at once."""
        params = call_params(method, args, kwargs, self.time_limit)
        params["notify"] = True
        handle = TaskHandle(self, params["task_id"], method)
        self._connection.submit(params, handle)
        return handle

    submit = call

    def status(self, task_id: str, timeout: float | None = None) -> str:
        """The state of any task this broker knows; raises UnknownTask otherwise."""
        state: str = self._control("zerotask.broker.status", {"task_id": task_id}, timeout)
        return state

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the result of any task by id (also one submitted by another client)."""
        params: dict[str, Any] = {"task_id": task_id, "wait": True}
        if timeout is not None:
            params["timeout_s"] = timeout
        return self._control("zerotask.broker.result", params, timeout)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._control("zerotask.broker.info", {}, self.timeout)
        return info

    def revoke(self, task_id: str, timeout: float | None = None) -> str:
        """Revoke a task (see :meth:`Client.revoke`); its handle then raises TaskRevoked."""
        state: str = self._control("zerotask.broker.revoke", {"task_id": task_id}, timeout)
        return state

    def _control(self, method: str, params: jsonrpc.Params, timeout: float | None) -> Any:
        answer = self._connection.call(method, params)
        limit = timeout if timeout is not None else self.timeout
        try:
            return answer.result(limit)
        except concurrent.futures.TimeoutError:
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


class _Method:
    """``client.a.b.c(...)``: the task named ``a.b.c``."""

    def __init__(self, client: Client | AsyncClient, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._client, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self._name} via {self._client.endpoint}>"


def main(argv: list[str] | None = None) -> None:
    from zerotask.cli import client_main

    client_main(argv)


if __name__ == "__main__":
    main()
