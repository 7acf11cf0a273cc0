"""What the brokers sharing a Redis store tell each other: a pub/sub channel per broker, read without
blocking.

The store's scripts publish, in the same atomic step as the write, ``["F", broker, [task ids]]`` when
outcomes are recorded and ``["Q", broker, {}]`` when tasks are queued, on the channel of each other
broker in the store's set of brokers (never to the one that wrote: a broker alone publishes nothing).
Pub/sub is fire-and-forget: a broker that was disconnected missed what was published meanwhile.
redis-py subscribes again when it reconnects, and Redis confirms every subscription; a confirmation
after the first one therefore means messages may have been missed, which :class:`Notifications`
reports as ``lost_track``. So does ``["L", broker, []]``, which a broker publishes to itself when its
heartbeat finds it was dropped from the set of brokers (its lease ran out: no one published to it).
"""

from __future__ import annotations

import time
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import Changes
from zerotask.store.redis_client import SOCKET_TIMEOUT_S, Route, reaching_redis, unavailable_error


class Notifications:
    """A subscription to ``channel`` on the Redis ``route`` talks to (on a Redis Cluster, the master it
    found for the store's slot: when that changes, the subscription moves too, and reports ``lost_track``);
    ignores what broker ``me`` published itself."""

    def __init__(self, route: Route, channel: bytes, me: str) -> None:
        self._route, self._client, self._channel = route, route.client, channel
        self._pubsub = route.client.pubsub()
        self._me = me.encode()
        self._subscriptions = 0  # confirmations seen: the first is the subscription, later ones reconnects
        self._changes = Changes()
        self._finished: dict[str, None] = {}  # ordered, without repeats
        self._subscribe()

    def _subscribe(self) -> None:
        channel = self._channel
        with reaching_redis():
            self._pubsub.subscribe(channel)
            deadline = time.monotonic() + SOCKET_TIMEOUT_S
            while not self._subscriptions:  # until Redis confirms, a message published could still be missed
                left = deadline - time.monotonic()
                if left <= 0:
                    self._pubsub.close()
                    raise unavailable_error(TimeoutError("Redis did not confirm the subscription"))
                self._read(self._pubsub.get_message(timeout=left))

    def fileno(self) -> int | None:
        """The subscription's socket (readable when a message came), or None while it is disconnected.
        The socket is a new one after a reconnect."""
        connection = self._pubsub.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        return None if sock is None else int(sock.fileno())

    def poll(self) -> None:
        """Read every message that arrived (a reply parser may hold several after one read of the socket).
        Raises StoreUnavailable while Redis cannot be reached; the next call connects and subscribes again."""
        if self._route.client is not self._client:  # the store's slot has another master now: listen there
            self._pubsub.close()
            self._client, self._pubsub, self._subscriptions = self._route.client, self._route.client.pubsub(), 0
            self._changes.lost_track = True
            self._subscribe()
        with reaching_redis():
            while (message := self._pubsub.get_message(timeout=0.0)) is not None:
                self._read(message)

    def take(self) -> Changes:
        """What was read since the last take."""
        found, self._changes = self._changes, Changes()
        found.finished, self._finished = list(self._finished), {}
        return found

    def _read(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        if message["type"] == "subscribe":
            self._subscriptions += 1
            self._changes.lost_track |= self._subscriptions > 1
        elif message["type"] == "message":
            kind, broker, task_ids = jsonrpc.loads(message["data"])
            if kind == "L":
                self._changes.lost_track = True
            elif broker.encode() == self._me:
                return
            elif kind == "F":
                self._finished.update(dict.fromkeys(task_ids))
            elif kind == "Q":
                self._changes.queued = True

    def close(self) -> None:
        self._pubsub.close()
