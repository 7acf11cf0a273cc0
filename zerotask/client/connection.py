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
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from zerotask import jsonrpc, sockets, wire
from zerotask.client.handle import TaskHandle
from zerotask.exceptions import ZerotaskError, from_error_object
from zerotask.loop import Silence

log = logging.getLogger(__name__)

BATCH_SIZE = 1000  # requests per message at most


class ConnectionClosed(ZerotaskError):
    """The client was closed while this was still waiting."""


@dataclass(slots=True)
class _Submission:
    params: dict[str, Any]
    outcome: TaskHandle


@dataclass(slots=True)
class _Call:
    method: str
    params: jsonrpc.Params
    answer: Future[Any]


class BrokerConnection:
    """Submits tasks and control calls to one broker from a background thread."""

    def __init__(self, endpoint: str, heartbeat_s: float = 1.0, liveness: int = 5) -> None:
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._outgoing: collections.deque[_Submission | _Call | None] = collections.deque()
        self._tasks: dict[str, _Submission] = {}  # submitted, outcome not yet known
        self._calls: dict[int, _Call] = {}  # control calls awaiting their response
        self._instance: str | None = None  # the broker instance that has our tasks
        self._last_ping = 0.0
        self._silence = Silence(heartbeat_s, liveness)
        self._ids = itertools.count(1)
        self._signalled = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"zerotask-client {endpoint}", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------------

    def submit(self, params: dict[str, Any], handle: TaskHandle) -> None:
        """Queue ``zerotask.broker.submit`` params (with a task_id); ``handle`` gets the task's outcome."""
        self._put(_Submission(params, handle))

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
        self._poller = zmq.Poller()
        self._poller.register(self._wake_reader.fileno(), zmq.POLLIN)
        self._socket: zmq.Socket[bytes] | None = None
        self._open_socket()
        running = True
        try:
            while running:
                ready = dict(self._poller.poll(int(self.heartbeat_s * 1000)))
                if self._socket in ready:
                    self._receive()
                if self._wake_reader.fileno() in ready:
                    running = self._send_outgoing()
                self._check_liveness()
        except Exception:  # a bug here must fail the callers, not leave them waiting forever
            log.exception("the client connection thread failed")
        finally:
            self._fail_everything(ConnectionClosed("the client is closed"))
            if self._socket is not None:
                self._socket.close(linger=0)

    def _open_socket(self) -> None:
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(linger=0)
        # Flow control is the caller's business: never block or drop here.
        sock = sockets.dealer(zmq.Context.instance(), self.endpoint, unbounded=True)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        self._ping()  # learn which broker instance holds what we are about to send

    # ---- surviving a broker restart --------------------------------------------------------------

    def _ping(self) -> None:
        request_id = next(self._ids)
        self._calls[request_id] = _Call(wire.PING, {}, Future())
        self._calls[request_id].answer.add_done_callback(self._on_pong)
        self._last_ping = time.monotonic()
        self._send([jsonrpc.request(wire.PING, {}, request_id)])

    def _on_pong(self, answer: Future[Any]) -> None:
        if answer.exception() is not None:
            return
        instance = (answer.result() or {}).get("instance")
        if self._instance is not None and instance != self._instance:
            log.warning("the broker restarted: sending our %d unfinished task(s) again", len(self._tasks))
            self._resend_everything()
        self._instance = instance

    def _check_liveness(self) -> None:
        """While anything is outstanding, ping the broker every heartbeat; if it stays silent, connect
        a fresh socket (backing off) and send everything again. Every resent call is idempotent."""
        if not self._tasks and len(self._calls) <= 1:  # idle (at most our own ping): nothing to lose
            self._silence.last_heard = time.monotonic()
            return
        silent_s = self._silence.silent_s()
        if self._silence.overdue():
            log.warning("the broker has been silent for %.1f s: reconnecting", silent_s)
            self._calls = {request_id: call for request_id, call in self._calls.items() if call.method != wire.PING}
            self._open_socket()
            self._resend_everything()
        elif time.monotonic() - self._last_ping >= self.heartbeat_s:
            self._ping()

    def _resend_everything(self) -> None:
        """Submit again every task without an outcome, and repeat every control call. The broker finds
        a task it has by the id we chose (and pushes its outcome to us again), queues one it lost (a
        volatile store forgets), so nothing is lost and nothing doubles."""
        batch = [self._submit_request(submission) for submission in self._tasks.values()]
        for request_id, call in self._calls.items():
            if call.method != wire.PING:
                batch.append(jsonrpc.request(call.method, call.params, request_id))
        self._send(batch)

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
            if isinstance(item, _Submission):
                self._tasks[item.params["task_id"]] = item
                batch.append(self._submit_request(item))
            else:
                request_id = next(self._ids)
                self._calls[request_id] = item
                batch.append(jsonrpc.request(item.method, item.params, request_id))
        self._send(batch)
        return keep_running

    @staticmethod
    def _submit_request(submission: _Submission) -> dict[str, Any]:
        # A notification: no per-task acknowledgement to send, parse and match. The broker pushes the
        # outcome, or the refusal, as zerotask.client.finished; until then we keep the task to resend.
        return jsonrpc.notification(wire.SUBMIT, submission.params)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        """Send requests in batches of at most BATCH_SIZE: the broker reads a batch at once, and
        smaller messages keep it answering everyone else (and our pings) in between."""
        assert self._socket is not None
        for start in range(0, len(batch), BATCH_SIZE):
            chunk = batch[start : start + BATCH_SIZE]
            self._socket.send(jsonrpc.dumps(chunk[0] if len(chunk) == 1 else chunk))

    def _receive(self) -> None:
        assert self._socket is not None
        while True:
            try:
                payload = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._silence.heard()
            for item in jsonrpc.items(payload):
                self._on_item(item)

    def _on_item(self, item: dict[str, Any]) -> None:
        if item.get("method") == wire.CLIENT_FINISHED:
            self._on_finished(item.get("params") or {})
            return
        request_id = item.get("id")
        if not isinstance(request_id, int):
            return
        error = item.get("error")
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
            submission.outcome._settle(error=from_error_object(error))
        else:
            submission.outcome._settle(params.get("result"))

    def _fail_everything(self, error: ZerotaskError) -> None:
        for submission in self._tasks.values():
            submission.outcome._settle(error=error)
        for call in self._calls.values():
            _settle(call.answer, exception=error)
        while self._outgoing:
            item = self._outgoing.popleft()
            if isinstance(item, _Submission):
                item.outcome._settle(error=error)
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
