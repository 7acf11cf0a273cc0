"""Failover: a client or node given several broker endpoints talks to one broker at a time, and moves to
the next when that one is gone.

Two signals say a broker is gone. A socket monitor tells at once when the connection drops (a broker
killed, even with ``kill -9``: the kernel resets its connections) or is refused; silence tells when no
reset can arrive (the broker's host frozen or cut off), after ``liveness`` heartbeats without a word,
which each peer already watches. On either, the peer moves to the next endpoint, cycling, and sends
again what the broker it left may not have answered: every request is safe to repeat (the client names
its tasks), so the broker it reaches finds a task it already has (brokers sharing a store) or queues it.

After a whole round of endpoints with no broker answering, each next move waits (1 heartbeat, doubling
up to MAX_SILENCE_S): one warning per move, and no storm of reconnects while every broker is down.
Meanwhile ZeroMQ keeps reconnecting to the current endpoint by itself. With one endpoint nothing moves:
the peer reconnects to it, as it always did. Nodes and clients watch even one endpoint, for the
connection dropping: what was in flight on it is gone, so they connect or ask again (``watch_alone``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import zmq

from zerotask import sockets
from zerotask.loop import MAX_SILENCE_S

log = logging.getLogger(__name__)

# What a monitor reports as the broker being gone: an established connection dropped, or a connection
# attempt failed and will be retried (refused: nothing listens there). Both are rare while all is well.
GONE = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class Brokers:
    """The endpoints a peer may use (``"tcp://a:5555,tcp://b:5555"``, or a list; see
    :func:`zerotask.sockets.parse_endpoints`, which raises ValueError for a bad one), which one it uses
    now, and when it moves on. ``spread``: start at a random endpoint rather than the first (nodes do, so
    that a fleet given one list spreads over the brokers); ``backoff_s``: the first wait after a round of
    endpoints that all failed."""

    def __init__(self, endpoints: str | Sequence[str], spread: bool = False, backoff_s: float = 1.0) -> None:
        self.endpoints = sockets.parse_endpoints(endpoints)
        self._index = random.randrange(len(self.endpoints)) if spread else 0
        self._base_s = self._backoff_s = backoff_s
        self._moves = 0  # moves since a broker last answered
        self._not_before = 0.0  # no move before this time.monotonic()

    @property
    def current(self) -> str:
        """The endpoint to use now."""
        return self.endpoints[self._index]

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    def heard(self) -> None:
        """The current broker answered: the count of failed moves, and the backoff, start over."""
        if self._moves:
            self._moves = 0
            self._backoff_s = self._base_s
            self._not_before = 0.0

    def lost(self, why: str) -> bool:
        """The current broker is gone (``why`` says how, for the log). Moves to the next endpoint and
        returns True; or returns False, staying, with one endpoint or while backing off after a round
        in which no broker answered."""
        now = time.monotonic()
        if not self.several or now < self._not_before:
            return False
        gone = self.current
        self._index = (self._index + 1) % len(self.endpoints)
        self._moves += 1
        if self._moves >= len(self.endpoints):  # a whole round and no one answered: wait before the next move
            self._not_before = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, MAX_SILENCE_S)
        log.warning("broker %s is gone (%s): moving to %s", gone, why, self.current)
        return True

    def connect(
        self,
        context: sockets.Context,
        events: int = GONE,
        routing_id: bytes | None = None,
        unbounded: bool = False,
        curve: sockets.CurveKeys | None = None,
        retry_max_ms: int = 0,
        watch_alone: bool = False,
    ) -> tuple[sockets.Socket, sockets.Socket | None]:
        """A DEALER connected to the current endpoint and, with several endpoints, a monitor of its
        ``events`` (see :func:`gone`; ``retry_max_ms``: see :func:`zerotask.sockets.watched_dealer`);
        with one, None: there is nowhere to move to; or, ``watch_alone``, a monitor of the connection
        dropping (EVENT_DISCONNECTED only: no event while no one listens there). Close both with
        :func:`zerotask.sockets.close_watched`."""
        if not self.several and watch_alone:
            return sockets.watched_dealer(context, self.current, zmq.EVENT_DISCONNECTED, routing_id, unbounded, curve)
        if not self.several:
            return sockets.dealer(context, self.current, routing_id, unbounded, curve), None
        return sockets.watched_dealer(context, self.current, events, routing_id, unbounded, curve, retry_max_ms)


def gone(monitor: sockets.Socket) -> bool:
    """Read every event waiting on a monitor made by :meth:`Brokers.connect`; True if there was one
    (each of its events means the connection dropped or was refused)."""
    seen = False
    while True:
        try:
            monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return seen
        seen = True
