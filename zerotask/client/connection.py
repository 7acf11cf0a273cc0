"""BrokerConnection: one background thread that owns a DEALER socket to the broker for an AsyncClient.

Callers in any thread hand it work through a queue; the thread sends everything that queued up in
JSON-RPC batches (many submits per message, each message under the broker's size limit) and resolves
futures as answers arrive. Task outcomes are pushed by the broker (``zerotask.client.finished``
notifications), never polled.

Socket and thread belong together: ZeroMQ sockets are not thread-safe, so only this thread touches it.
Given several brokers, the thread talks to one and moves to the next when it is gone (its connection
drops, or it stays silent), submitting again there what is unanswered (:mod:`zerotask.failover`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from zerotask import failover, jsonrpc, sockets, wire
from zerotask.client.handle import TaskHandle
from zerotask.client.packing import DEFAULT_MAX_MESSAGE_BYTES, MESSAGE_ROOM, pack
from zerotask.exceptions import ZerotaskError, from_error_object
from zerotask.loop import Silence

log = logging.getLogger(__name__)

# A caller submitting in a loop holds the GIL, and the connection's thread, woken to send, waits for it:
# Python hands it over only every switch interval (5 ms), so the first submits of a flood waited 13-19 ms
# to go out and the broker sat idle meanwhile. Every YIELD_EVERY queued, the caller lets the thread send
# them. AsyncClient runs of 10,000 adds (python -m bench.roles --tasks 10000, 8 alternating runs each):
# median 44,200 -> 49,100 tasks/s; the first submits leave after 7-11 ms.
YIELD_EVERY = 500


class ConnectionClosed(ZerotaskError):
    """The client was closed while this was still waiting."""


class RequestTooLarge(ZerotaskError, ValueError):
    """The request is larger than the broker accepts in one message, so it was never sent. ``data``:
    ``{"bytes": its size, "max_message_bytes": the broker's limit}``."""

    code = jsonrpc.INVALID_PARAMS


# ``sent_after``: the id of the last ping sent before the request was (last) sent. Messages on a socket
# arrive in order, so a request sent after a ping reached whichever broker answered that ping.
@dataclass(slots=True)
class _Submission:
    params: dict[str, Any]
    outcome: TaskHandle
    sent_after: int = 0


@dataclass(slots=True)
class _Call:
    method: str
    params: jsonrpc.Params
    answer: Future[Any]
    sent_after: int = 0


class BrokerConnection:
    """Submits tasks and control calls to one broker at a time (of ``brokers``) from a background thread.

    Every message stays under the broker's ``max_message_bytes`` (from its pongs; 16 MiB until the
    first); a request that alone exceeds it fails at once with :class:`RequestTooLarge`, unsent.
    """

    def __init__(
        self, brokers: failover.Brokers, heartbeat_s: float = 1.0, liveness: int = 5, curve: sockets.CurveKeys | None = None
    ) -> None:
        self.brokers = brokers
        self.curve = curve  # CURVE keys for the socket; None: plaintext
        self.answered = False  # whether the broker ever answered (if not, a refused CURVE key is a suspect)
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES  # the broker's limit, as its last pong said
        self._outgoing: collections.deque[_Submission | _Call | None] = collections.deque()
        self._tasks: dict[str, _Submission] = {}  # submitted, outcome not yet known
        self._calls: dict[int, _Call] = {}  # control calls awaiting their response
        self._instance: str | None = None  # the broker instance that has our tasks
        self._pings: set[int] = set()  # ids of our pings not answered yet, on this socket
        self._last_ping_id = 0
        self._largest_sent = 0  # bytes in the largest message sent on this socket
        self._last_ping = 0.0
        self._silence = Silence(heartbeat_s, liveness)
        self._ids = itertools.count(1)
        self._signalled = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"zerotask-client {brokers.current}", daemon=True)
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
        outgoing = self._outgoing
        outgoing.append(item)
        if not self._signalled:
            self._signalled = True
            try:
                self._wake_writer.send(b"x")
            except BlockingIOError:
                pass  # the reader has wake-ups pending already
        elif len(outgoing) % YIELD_EVERY == 0:
            time.sleep(0)  # (releases the GIL: the connection's thread sends what waits)

    # ---- the connection's own thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._poller = zmq.Poller()
        self._poller.register(self._wake_reader.fileno(), zmq.POLLIN)
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # tells when the connection drops
        self._open_socket()
        running = True
        try:
            while running:
                ready = dict(self._poller.poll(self._wait_ms()))
                if self._socket in ready:
                    self._receive()
                if self._monitor is not None and self._monitor in ready:
                    self._on_monitor(self._monitor)
                if self._wake_reader.fileno() in ready:
                    running = self._send_outgoing()
                self._check_liveness()
        except Exception:  # a bug here must fail the callers, not leave them waiting forever
            log.exception("the client connection thread failed")
        finally:
            self._fail_everything(ConnectionClosed("the client is closed"))
            self._close_socket()

    def _open_socket(self) -> None:
        self._close_socket()
        # Flow control is the caller's business: never block or drop here.
        sock, self._monitor = self.brokers.connect(zmq.Context.instance(), unbounded=True, curve=self.curve, watch_alone=True)
        self._heard_on_socket = False
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        if self._monitor is not None:
            self._poller.register(self._monitor, zmq.POLLIN)
        self._pings.clear()
        self._largest_sent = 0
        self._ping()  # learn which broker instance holds what we are about to send, and its size limit

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._poller.unregister(self._socket)
            if self._monitor is not None:
                self._poller.unregister(self._monitor)
            sockets.close_watched(self._socket, self._monitor)
            self._socket = self._monitor = None

    @property
    def endpoint(self) -> str:
        """The endpoint of the broker the connection uses now."""
        return self.brokers.current

    # ---- surviving a broker restart, or its loss ---------------------------------------------------

    def _ping(self) -> None:
        request_id = next(self._ids)
        self._pings.add(request_id)
        self._last_ping_id = request_id
        self._last_ping = time.monotonic()
        self._send([jsonrpc.request(wire.PING, {}, request_id)])

    def _on_pong(self, ping_id: int, pong: Any) -> None:
        """What we sent after ping ``ping_id`` followed it (a socket keeps order) to the broker that answers;
        what we sent before may have gone to one that died unanswered, even before our first pong. So a
        pong from an instance other than the one that has our tasks (None at first) makes us send again
        what was sent before its ping: normally nothing, as the first ping goes out before any task."""
        self._pings = {request_id for request_id in self._pings if request_id > ping_id}  # earlier: lost
        if not isinstance(pong, dict):
            return
        limit = pong.get("max_message_bytes")
        if isinstance(limit, int) and limit > 2 * MESSAGE_ROOM:
            self.max_message_bytes = limit
        if self._largest_sent > self.max_message_bytes:  # sent before we knew: the broker dropped us
            log.warning("the broker takes at most %d bytes per message: reconnecting", self.max_message_bytes)
            self._reconnect()
        elif pong.get("instance") != self._instance:
            self._resend(sent_before=ping_id)
        self._instance = pong.get("instance")

    def _wait_ms(self) -> int:
        """How long to wait for something to happen: a heartbeat, or less until the next ping is due or,
        with something outstanding, the broker's silence runs out."""
        if not self._tasks and not self._calls:
            return int(self.heartbeat_s * 1000)
        now = time.monotonic()
        due = min(self._last_ping + self.heartbeat_s, self._silence.last_heard + self._silence.limit_s)
        return max(0, math.ceil(min(self.heartbeat_s, due - now) * 1000))

    def _on_monitor(self, monitor: zmq.Socket[bytes]) -> None:
        """The connection dropped, and what was in flight with it: move to the next broker, of several (with one, a
        fresh socket if it had answered on this one; silence covers one that never did), and send everything again."""
        if failover.gone(monitor) and (self.brokers.lost("its connection dropped") or self._heard_on_socket):
            self._reconnect()

    def _check_liveness(self) -> None:
        """While anything is outstanding, ping the broker every heartbeat; if it stays silent, connect
        a fresh socket (backing off) and send everything again. Every resent call is idempotent."""
        if not self._tasks and not self._calls:  # idle: nothing to lose
            self._silence.last_heard = time.monotonic()
            return
        silent_s = self._silence.silent_s()
        if self._silence.overdue():
            if not self.brokers.lost(f"silent for {silent_s:.1f} s"):
                log.warning("the broker has been silent for %.1f s: reconnecting", silent_s)
            self._reconnect()
        elif time.monotonic() - self._last_ping >= self.heartbeat_s:
            self._ping()

    def _reconnect(self) -> None:
        self._open_socket()
        self._resend()

    def _resend(self, sent_before: float = math.inf) -> None:
        """Submit again every task without an outcome, and repeat every control call, last sent before
        ping ``sent_before``. The broker finds a task it has by the id we chose (and pushes its outcome to
        us again), queues one it lost (a volatile store forgets): nothing is lost, nothing doubles."""
        batch = []
        for submission in self._tasks.values():
            if submission.sent_after < sent_before:
                submission.sent_after = self._last_ping_id
                batch.append(self._submit_request(submission))
        for request_id, call in self._calls.items():
            if call.sent_after < sent_before:
                call.sent_after = self._last_ping_id
                batch.append(jsonrpc.request(call.method, call.params, request_id))
        if batch:
            log.warning("sending %d unanswered request(s) again", len(batch))
            self._send(batch)

    def _send_outgoing(self) -> bool:
        """Send everything queued, in as few messages as fit; False once close() asked the thread to stop."""
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._signalled = False
        batch: list[dict[str, Any]] = []
        keep_running = True
        sent_after = self._last_ping_id
        while self._outgoing:
            item = self._outgoing.popleft()
            if item is None:
                keep_running = False
                break
            item.sent_after = sent_after
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

    # ---- messages under the broker's size limit ----------------------------------------------------

    def _send(self, batch: list[dict[str, Any]]) -> None:
        for payload in pack(batch, self.max_message_bytes, self._refuse):
            self._send_bytes(payload)

    def _send_bytes(self, payload: bytes) -> None:
        assert self._socket is not None
        try:
            self._socket.send(payload, zmq.NOBLOCK)
        except zmq.Again:  # no connection: a refused CURVE handshake leaves none; the silence check reconnects
            return
        self._largest_sent = max(self._largest_sent, len(payload))

    def _refuse(self, request: dict[str, Any], size: int) -> None:
        """Fail the one request that can never fit in a message, instead of sending it."""
        limit = self.max_message_bytes
        request_id = request.get("id")
        name = request["method"] if isinstance(request_id, int) else request["params"]["method"]
        text = f"{name}: the request is {size} bytes, more than the broker takes in one message"
        error = RequestTooLarge(f"{text} ({limit} bytes, {MESSAGE_ROOM} kept free)", {"bytes": size, "max_message_bytes": limit})
        if isinstance(request_id, int):
            call = self._calls.pop(request_id, None)
            if call is not None:
                _settle(call.answer, exception=error)
        else:
            submission = self._tasks.pop(request["params"]["task_id"], None)
            if submission is not None:
                submission.outcome._settle(error=error)

    def _receive(self) -> None:
        assert self._socket is not None
        while True:
            try:
                payload = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._silence.heard()
            self.brokers.heard()
            self.answered = self._heard_on_socket = True
            for item in jsonrpc.items(payload):
                self._on_item(item)

    def _on_item(self, item: dict[str, Any]) -> None:
        if item.get("method") == wire.CLIENT_FINISHED:
            self._on_finished(item.get("params") or {})
            return
        request_id = item.get("id")
        if not isinstance(request_id, int):
            return
        if request_id in self._pings:
            self._on_pong(request_id, item.get("result"))
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
