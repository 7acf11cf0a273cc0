"""Client: calls tasks through a broker and waits for their results.

``Client("tcp://127.0.0.1:5555").add(5, 6) == 11``. A Client holds one DEALER socket and is meant for
one thread; make one per thread. Attribute access builds task names, so
``client.namespaces.are.awesome.foo()`` calls the task ``namespaces.are.awesome.foo``; a task whose
name collides with a Client method (``submit``, ``status``, ``result``...) is called with
:meth:`Client.call`.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import zmq

from zerotask import jsonrpc
from zerotask.exceptions import ProtocolError, TaskTimeout, from_error_object

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class Client:
    """A blocking client. ``timeout`` (seconds, None for no limit) bounds every call that waits."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._socket: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)

    # ---- calling tasks ---------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run task ``method`` and return its result. Raises TaskError if it raised, UnknownMethod if no
        connected node serves it, TaskTimeout if ``self.timeout`` runs out first."""
        return self.rpc("zerotask.broker.call", self._call_params(method, args, kwargs), self.timeout)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> str:
        """Queue task ``method`` and return its task id at once (once the broker has stored it)."""
        task_id: str = self.rpc("zerotask.broker.submit", self._call_params(method, args, kwargs), self.timeout)
        return task_id

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

    @staticmethod
    def _call_params(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        # The client names the task: a call it repeats (after a lost reply) finds the same task.
        return {"method": method, "args": list(args), "kwargs": kwargs, "task_id": uuid.uuid4().hex}

    # ---- the wire --------------------------------------------------------------------------------

    def rpc(self, method: str, params: jsonrpc.Params, timeout: float | None = None) -> Any:
        """Send one JSON-RPC request to the broker and return its result (or raise its error)."""
        sock = self._connected()
        request_id = next(self._ids)
        sock.send(jsonrpc.dumps(jsonrpc.request(method, params, request_id)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not sock.poll(remaining_ms):
                raise TaskTimeout(f"no answer to {method} within {timeout} s")
            response = self._parse(sock.recv())
            if response is None or response.id != request_id:
                continue  # the late answer to an earlier call that timed out
            if response.error is not None:
                raise from_error_object(response.error)
            return response.result

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
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Method:
    """``client.a.b.c(...)``: the task named ``a.b.c``."""

    def __init__(self, client: Client, name: str) -> None:
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
