"""Task events on the broker's XPUB socket (docs/protocol.md, 7.6), as a hook on the core.

Events are collected as they happen and published by the transport after the store has committed what
they say. With nobody subscribed nothing is even encoded: the XPUB socket tells the broker who listens.
"""

from __future__ import annotations

from typing import Any

from zerotask import jsonrpc, wire
from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord

MAX_SUBSCRIPTIONS = 1_000  # distinct topics; the XPUB socket also caps a subscription's size (sockets.py)


class EventPublisher(Hooks):
    def __init__(self) -> None:
        self._subscriptions: set[bytes] = set()
        self._pending: list[bytes] = []

    def subscription(self, message: bytes) -> None:
        """A message from the XPUB socket: ``\\x01topic`` subscribes, ``\\x00topic`` unsubscribes."""
        if message[:1] == b"\x01":
            if len(self._subscriptions) < MAX_SUBSCRIPTIONS:  # beyond, a topic is not tracked: events go out anyway
                self._subscriptions.add(message[1:])
        elif message[:1] == b"\x00":
            self._subscriptions.discard(message[1:])

    def take(self) -> list[bytes]:
        """The events collected since the last call, encoded, in order."""
        pending, self._pending = self._pending, []
        return pending

    def _publish(self, event: str, params: dict[str, Any]) -> None:
        if self._subscriptions:
            self._pending.append(jsonrpc.dumps(jsonrpc.notification(wire.EVENT_PREFIX + event, params)))

    def progress(self, task_id: str, progress: dict[str, Any]) -> None:
        self._publish("progress", {"task_id": task_id, **progress})

    def after_enqueue(self, record: TaskRecord) -> None:
        if self._subscriptions:  # (checked first too: most brokers have no watcher, and this is per task)
            self._publish("queued", {"task_id": record.id, "method": record.method})

    def on_retry(self, record: TaskRecord, attempt: int, delay_s: float) -> None:
        self._publish("retry", {"task_id": record.id, "attempt": attempt, "delay_s": delay_s})

    def after_finish(self, record: TaskRecord) -> None:
        if self._subscriptions:
            self._publish(record.state.lower(), {"task_id": record.id, "state": record.state})
