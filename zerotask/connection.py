"""BrokerConnection: one background thread that owns a DEALER socket to the broker for an AsyncClient.

Callers in any thread hand it work through a queue; the thread sends everything that queued up in one
JSON-RPC batch (many submits per round trip) and resolves futures as answers arrive. Task outcomes are
pushed by the broker (``zerotask.client.finished`` notifications), never polled.

Socket and thread belong together: ZeroMQ sockets are not thread-safe, so only this thread touches it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from zerotask import jsonrpc
from zerotask.exceptions import ZerotaskError, from_error_object

log = logging.getLogger(__name__)


class ConnectionClosed(ZerotaskError):
    """The client was closed while this was still waiting."""


@dataclass(slots=True)
class _Submission:
    params: dict[str, Any]
    outcome: Future[Any]
    acknowledged: bool = False


@dataclass(slots=True)
class _Call:
    method: str
    params: jsonrpc.Params
    answer: Future[Any]


class BrokerConnection:
    """Submits tasks and control calls to one broker from a background thread."""

    def __init__(self, endpoint: str, heartbeat_s: float = 1.0, liveness: int = 3) -> None:
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._outgoing: collections.deque[_Submission | _Call | None] = collections.deque()
        self._tasks: dict[str, _Submission] = {}  # submitted, outcome not yet known
        self._calls: dict[int, _Call] = {}  # control calls awaiting their response
        self._acks: dict[int, str] = {}  # submit request id -> task id
        self._ids = itertools.count(1)
        self._signalled = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"zerotask-client {endpoint}", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------------

    def submit(self, params: dict[str, Any]) -> Future[Any]:
        """Queue ``zerotask.broker.submit`` params (with a task_id); the future gets the task's outcome."""
        submission = _Submission(params, Future())
        self._put(submission)
        return submission.outcome

    def call(self, method: str, params: jsonrpc.Params) -> Future[Any]:
        """Send one control request; the future gets its result (or its error as an exception)."""
        call = _Call(method, params, Future())
        self._put(call)
        return call.answer

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; anything still waiting fails with ConnectionClosed."""
        if self._closed:
            return
        self._closed = True
        self._put(None)
        self._thread.join(timeout_s)
        self._wake_reader.close()
        self._wake_writer.close()

    def _put(self, item: _Submission | _Call | None) -> None:
        if self._closed and item is not None:
            raise ConnectionClosed("the client is closed")
        self._outgoing.append(item)
        if not self._signalled:
            self._signalled = True
            try:
                self._wake_writer.send(b"x")
            except BlockingIOError:
                pass  # the reader has wake-ups pending already

    # ---- the connection's own thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._socket = self._connect()
        poller = zmq.Poller()
        poller.register(self._wake_reader.fileno(), zmq.POLLIN)
        poller.register(self._socket, zmq.POLLIN)
        running = True
        try:
            while running:
                ready = dict(poller.poll(int(self.heartbeat_s * 1000)))
                if self._socket in ready:
                    self._receive()
                if self._wake_reader.fileno() in ready:
                    running = self._send_outgoing()
        except Exception:  # a bug here must fail the callers, not leave them waiting forever
            log.exception("the client connection thread failed")
        finally:
            self._fail_everything(ConnectionClosed("the client is closed"))
            self._socket.close(linger=0)

    def _connect(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # flow control is the caller's business; never block or drop here
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        return sock

    def _send_outgoing(self) -> bool:
        """Send everything queued as one message; False once close() asked the thread to stop."""
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._signalled = False
        batch: list[dict[str, Any]] = []
        keep_running = True
        while self._outgoing:
            item = self._outgoing.popleft()
            if item is None:
                keep_running = False
                break
            request_id = next(self._ids)
            if isinstance(item, _Submission):
                task_id = item.params["task_id"]
                self._tasks[task_id] = item
                self._acks[request_id] = task_id
                batch.append(jsonrpc.request("zerotask.broker.submit", item.params, request_id))
            else:
                self._calls[request_id] = item
                batch.append(jsonrpc.request(item.method, item.params, request_id))
        if batch:
            self._socket.send(jsonrpc.dumps(batch[0] if len(batch) == 1 else batch))
        return keep_running

    def _receive(self) -> None:
        while True:
            try:
                payload = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = jsonrpc.loads(payload)
            except jsonrpc.InvalidMessage:
                log.warning("ignoring a message from the broker that is not JSON")
                continue
            for item in message if isinstance(message, list) else [message]:
                if isinstance(item, dict):
                    self._on_item(item)

    def _on_item(self, item: dict[str, Any]) -> None:
        if item.get("method") == "zerotask.client.finished":
            self._on_finished(item.get("params") or {})
            return
        request_id = item.get("id")
        if not isinstance(request_id, int):
            return
        error = item.get("error")
        task_id = self._acks.pop(request_id, None)
        if task_id is not None:
            submission = self._tasks.get(task_id)
            if submission is None:
                return
            if isinstance(error, dict):  # refused: unknown method, bad params...
                del self._tasks[task_id]
                _settle(submission.outcome, exception=from_error_object(error))
            else:
                submission.acknowledged = True
            return
        call = self._calls.pop(request_id, None)
        if call is None:
            return
        if isinstance(error, dict):
            _settle(call.answer, exception=from_error_object(error))
        else:
            _settle(call.answer, result=item.get("result"))

    def _on_finished(self, params: dict[str, Any]) -> None:
        submission = self._tasks.pop(params.get("task_id"), None)  # type: ignore[arg-type]
        if submission is None:
            return
        error = params.get("error")
        if isinstance(error, dict):
            _settle(submission.outcome, exception=from_error_object(error))
        else:
            _settle(submission.outcome, result=params.get("result"))

    def _fail_everything(self, error: ZerotaskError) -> None:
        for submission in self._tasks.values():
            _settle(submission.outcome, exception=error)
        for call in self._calls.values():
            _settle(call.answer, exception=error)
        while self._outgoing:
            item = self._outgoing.popleft()
            if isinstance(item, _Submission):
                _settle(item.outcome, exception=error)
            elif isinstance(item, _Call):
                _settle(item.answer, exception=error)
        self._tasks.clear()
        self._calls.clear()

    @property
    def outstanding(self) -> int:
        """Tasks submitted whose outcome has not arrived yet."""
        return len(self._tasks)


def _settle(future: Future[Any], result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
