"""Client: calls tasks through a broker and waits for their results.

``Client("tcp://127.0.0.1:5555").add(5, 6) == 11``. A Client holds one DEALER socket and is meant for
one thread; make one per thread. Attribute access builds task names, so
``client.namespaces.are.awesome.foo()`` calls the task ``namespaces.are.awesome.foo``; a task whose
name collides with a Client method (``submit``, ``status``, ``result``...) is called with
:meth:`Client.call`. Given several brokers (``Client("tcp://a:5555,tcp://b:5555")``), it talks to the
first and moves to the next when that one is gone (:mod:`zerotask.failover`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import zmq

from zerotask import auth, failover, jsonrpc, sockets, wire
from zerotask.canvas import Canvas
from zerotask.client import calls
from zerotask.client.calls import DEFAULT_ENDPOINT, TaskMethod, apply_request, call_params, reachable
from zerotask.exceptions import ProtocolError, TaskTimeout, from_error_object
from zerotask.loop import MAX_SILENCE_S, Silence

_KEYS_HINT = "check curve_secret and broker_key (or ZEROTASK_CURVE_SECRET, ZEROTASK_BROKER_KEY)"
# With several brokers, an answer is first waited for this long on the DEALER alone, then on it and its
# monitor together: a call answered sooner costs no more than with one broker (no extra system call).
QUICK_ANSWER_S = 0.1
# The client's socket waits this long in a blocking read (its RCVTIMEO): an answer is awaited with one
# read, which costs less than zmq_poll and a read (a list, system calls); a shorter wait is polled.
RECEIVE_WAIT_MS = 100


class Client:
    """A blocking client. ``timeout`` (seconds, None for no limit) bounds every call that waits;
    ``time_limit`` (seconds) is the default time limit of the tasks it submits (the node kills a task
    that runs longer; a task's own ``@task(timeout=...)`` applies when neither is set).

    While it waits, the client pings the broker every ``heartbeat_s``; when the broker restarts or
    stays silent for ``liveness`` heartbeats, it reconnects and asks again (calls are idempotent: the
    task id is chosen here), so a caller blocked on a result gets it after a broker restart.

    ``endpoint`` may name several brokers, separated by commas or as a list (ValueError for a bad one).
    The client uses the first, and moves to the next when its connection drops (at once: a broker killed
    resets it) or it is silent for ``liveness`` heartbeats (a host cut off), and asks the next again.
    ``liveness`` None means 5 with one broker, 2 with several (somewhere to go is worth going sooner).

    ``curve_secret`` (this client's secret certificate) and ``broker_key`` (the broker's public one), by
    default from ZEROTASK_CURVE_SECRET and ZEROTASK_BROKER_KEY, connect with CURVE (events too); a broker
    that refuses the key never answers, so calls time out with a hint about keys.
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
        self.curve = auth.peer_keys(curve_secret, broker_key)  # None: plaintext
        self._answered = False  # whether the broker ever answered: if not, a timeout hints at keys
        self.timeout = timeout
        self.time_limit = time_limit
        self.heartbeat_s = heartbeat_s
        self.liveness = calls.liveness(liveness, len(self.brokers.endpoints))
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # with several brokers: tells when the connection drops
        self._dropped: zmq.Socket[bytes] | None = None  # with one: the same, read only when a ping is due
        self._poller = zmq.Poller()
        self._ids = itertools.count(1)
        self._pings = itertools.count(1)
        self._instance: str | None = None

    # ---- calling tasks ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint of the broker the client uses now."""
        return self.brokers.current

    def __getattr__(self, name: str) -> TaskMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return TaskMethod(self, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run task ``method`` and return its result. Raises TaskError if it raised, UnknownMethod if no
        connected node serves it, TaskTimeout if ``self.timeout`` runs out first."""
        return self.rpc(wire.CALL, call_params(method, args, kwargs, self.time_limit), self.timeout)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> str:
        """Queue task ``method`` and return its task id at once (once the broker has stored it)."""
        task_id: str = self.rpc(wire.SUBMIT, call_params(method, args, kwargs, self.time_limit), self.timeout)
        return task_id

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
    ) -> str:
        """Queue task ``method`` with delivery options (:meth:`zerotask.client.ControlAPI.apply_async`),
        or start a workflow (:mod:`zerotask.canvas`); returns its id once the broker has stored it."""
        request = apply_request(method, args, kwargs, countdown, eta, queue, priority, task_id, time_limit, self.time_limit)
        queued: str = self.rpc(*request, self.timeout)
        return queued

    def status(self, task_id: str, timeout: float | None = None) -> str:
        """The task's state: SCHEDULED, QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED or REVOKED.
        Raises UnknownTask for an id the broker does not know."""
        state: str = self.rpc(wire.STATUS, {"task_id": task_id}, self._timeout(timeout))
        return state

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None: the client's ``timeout``) for the task's result."""
        limit = self._timeout(timeout)
        params: dict[str, Any] = {"task_id": task_id, "wait": True}
        if limit is not None:
            params["timeout_s"] = limit
        return self.rpc(wire.RESULT, params, limit)

    def progress(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """What the running task last reported (:func:`zerotask.report_progress`): ``{"done", "total",
        "info"}``, or None (nothing reported, or no node runs it now). Raises UnknownTask."""
        progress: dict[str, Any] | None = self.rpc(wire.PROGRESS, {"task_id": task_id}, self._timeout(timeout))
        return progress

    def revoke(self, task_id: str, timeout: float | None = None) -> str:
        """Revoke a task: if queued it never runs, if running its worker is stopped. Returns the state
        afterwards (REVOKED, or the outcome it reached first). Waiting callers get TaskRevoked."""
        state: str = self.rpc(wire.REVOKE, {"task_id": task_id}, self._timeout(timeout))
        return state

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's description of itself: version, publish endpoint, nodes, queued counts."""
        info: dict[str, Any] = self.rpc(wire.INFO, {}, self._timeout(timeout))
        return info

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    # ---- the wire --------------------------------------------------------------------------------

    def rpc(self, method: str, params: jsonrpc.Params, timeout: float | None = None) -> Any:
        """Send one JSON-RPC request to the broker and return its result (or raise its error)."""
        sock = self._connected()
        request_id = next(self._ids)
        request = jsonrpc.dumps(jsonrpc.request(method, params, request_id))
        _send(sock, request)
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        last_ping = now
        silence = Silence(self.heartbeat_s, self.liveness)
        while True:
            # Wake for the next ping, or when the silence runs out, or at the deadline: whichever comes first.
            wait_s = min(last_ping + self.heartbeat_s, silence.last_heard + silence.limit_s) - now
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            if self._monitor is None:
                payload = _receive(sock, wait_s)
            else:
                payload = sockets.recv_frame(sock, sockets.NOBLOCK) if self._poll(sock, wait_s) else None
            if payload is not None:
                response = self._parse(payload)
                silence.heard()
                self.brokers.heard()
                self._answered = True
                if response is not None and isinstance(response.id, str) and response.id.startswith("ping-"):
                    if self._broker_restarted(response):
                        _send(sock, request)  # the new broker never saw it
                elif response is not None and response.id == request_id:
                    if response.error is not None:
                        raise from_error_object(response.error)
                    return response.result
                # anything else: the late answer to an earlier call that timed out
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if not self._answered:
                    raise TaskTimeout(f"no answer from the broker within {timeout} s: if it requires CURVE, {_KEYS_HINT}")
                raise TaskTimeout(f"no answer to {method} within {timeout} s")
            silent_s = silence.silent_s()
            moved = self._socket is not sock  # its connection dropped, and the client moved to the next broker
            if not moved and silence.overdue():
                # Silent broker: a fresh socket (the old one may hold a dead connection), to the next broker
                # if there are several.
                moved = self.brokers.lost(f"silent for {silent_s:.1f} s")
                self._reconnect(moved)
            if self._socket is None:  # ask again, on a fresh socket
                if moved:
                    silence.heard()  # the next broker gets a whole silence to answer in
                sock = self._connected()  # pings first
                last_ping = now
                _send(sock, request)
            elif now - last_ping >= self.heartbeat_s:
                last_ping = now
                if self._dropped is not None and failover.gone(self._dropped):
                    # ZeroMQ made the connection again, but the request or its answer may have been in flight.
                    _send(sock, request)
                self._ping(sock)

    def _poll(self, sock: zmq.Socket[bytes], wait_s: float) -> bool:
        """With several brokers: whether an answer arrives within ``wait_s``. A quick answer is waited
        for on the DEALER alone; then on it and its monitor. If the connection dropped, the client moves
        to the next broker (``self._socket`` is then a new socket) and this returns False."""
        wait_ms = max(0, math.ceil(wait_s * 1000))
        quick_ms = min(wait_ms, int(QUICK_ANSWER_S * 1000))
        if sockets.readable(sock, quick_ms):
            return True
        ready = dict(self._poller.poll(wait_ms - quick_ms))
        assert self._monitor is not None
        if self._monitor in ready and failover.gone(self._monitor) and self.brokers.lost("its connection dropped"):
            self._reconnect(moved=True)
            return False
        return sock in ready

    def _reconnect(self, moved: bool) -> None:
        """Close the socket, so the next call opens a fresh one (to the current broker). After a move, the
        new broker's pong is no news of a restart: what follows that ping goes to it anyway."""
        self.close()
        if moved:
            self._instance = None

    def _ping(self, sock: zmq.Socket[bytes]) -> None:
        _send(sock, jsonrpc.dumps(jsonrpc.request(wire.PING, {}, f"ping-{next(self._pings)}")))

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
            # Nothing reads the monitor while the client is idle: ZeroMQ's retries of a broker that
            # refuses (each an event) slow down to one every MAX_SILENCE_S, so that it stays small.
            retry_max_ms = int(MAX_SILENCE_S * 1000)
            connected = self.brokers.connect(
                zmq.Context.instance(), curve=self.curve, retry_max_ms=retry_max_ms, watch_alone=True
            )
            self._socket, monitor = connected
            if self.brokers.several:
                self._monitor = monitor
            else:
                self._dropped = monitor
            self._socket.setsockopt(zmq.RCVTIMEO, RECEIVE_WAIT_MS)
            if self._monitor is not None:
                self._poller = zmq.Poller()
                self._poller.register(self._socket, zmq.POLLIN)
                self._poller.register(self._monitor, zmq.POLLIN)
            self._ping(self._socket)  # learn which broker instance answers, to notice a restart later
        return self._socket

    def events(self, idle_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the broker's task events as they happen, each ``{"event": "queued" | "finished" |
        "failed" | "revoked" | "retry", "task_id": ..., ...}``, until ``idle_timeout`` seconds pass with
        none (None: for ever). Events are best effort: see docs/protocol.md, 1.3. With several brokers,
        when the one it listens to is gone it listens to the next (missing what happens meanwhile)."""
        timeout_ms = None if idle_timeout is None else int(idle_timeout * 1000)
        while True:
            publish = str(self.info()["publish"])
            subscriber = sockets.subscriber(zmq.Context.instance(), reachable(publish, self.endpoint), self.curve)
            monitor = sockets.watch(subscriber, zmq.EVENT_DISCONNECTED) if self.brokers.several else None
            poller = zmq.Poller()
            for sock in (subscriber, monitor):
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
            try:
                time.sleep(0.1)  # a SUB socket misses what is published before its subscription arrives
                while monitor not in (ready := dict(poller.poll(timeout_ms))):
                    if not ready:
                        return
                    for item in jsonrpc.items(subscriber.recv()):
                        method = str(item.get("method", ""))
                        if method.startswith(wire.EVENT_PREFIX):
                            yield {"event": method.removeprefix(wire.EVENT_PREFIX), **(item.get("params") or {})}
            finally:
                sockets.close_watched(subscriber, monitor)

    def close(self) -> None:
        if self._socket is not None:
            sockets.close_watched(self._socket, self._monitor or self._dropped)
            self._socket = self._monitor = self._dropped = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _receive(sock: zmq.Socket[bytes], wait_s: float) -> bytes | None:
    """What arrives within ``wait_s`` (None: nothing): a blocking read, up to RECEIVE_WAIT_MS, if the
    wait is at least that long; otherwise a poll, then a read."""
    wait_ms = max(0, math.ceil(wait_s * 1000))
    if wait_ms >= RECEIVE_WAIT_MS:
        try:
            payload: bytes = sockets.recv_frame(sock)
        except zmq.Again:
            return None
        return payload
    return sockets.recv_frame(sock, sockets.NOBLOCK) if sockets.readable(sock, wait_ms) else None


def _send(sock: zmq.Socket[bytes], payload: bytes) -> None:
    """Send without blocking. A socket whose key the broker's ZAP handler refused has no connection, and
    libzmq does not retry it: a blocking send would wait for ever. The message is dropped instead; the
    caller's silence check opens a fresh socket and sends again."""
    try:
        sockets.send_frame(sock, payload, sockets.NOBLOCK)
    except zmq.Again:
        pass
