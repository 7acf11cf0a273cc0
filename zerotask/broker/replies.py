"""How the broker answers the peers on its ROUTER socket: envelopes, the outbox, batches and waiting callers.

A ROUTER socket prefixes every message with the sender's routing id. REQ peers (and DEALER peers that
imitate them) add an empty delimiter frame, REQ peers with REQ_CORRELATE a request-id frame before it,
and a proxy in between its own routing id; bare DEALER peers add nothing. The reply must use the same
envelope, so it is kept with every request until the response is sent.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.exceptions import ZerotaskError
from zerotask.loop import Timer
from zerotask.store import TaskRecord

log = logging.getLogger("zerotask.broker")

Envelope = tuple[bytes, ...]
Message = dict[str, Any] | list[Any]
Respond = Callable[[dict[str, Any]], None]
Send = Callable[[Envelope, Message], None]


MAX_BACKLOG_BYTES = 64 * 1024 * 1024  # replies one peer has not taken yet, held by the broker at most
DEFAULT_REPLY_LIMIT = 16 * 1024 * 1024  # the largest payload the broker builds (its peers' message limit)


class PeerGone(Exception):
    """Raised by a send function: the peer is not connected any more."""


class Outbox:
    """Messages for peers, held until the store has committed what they say (the transport delivers
    them after each round's flush), in order per peer.

    A peer that reads slowly (a pipelining client) may find its ZeroMQ queue full: what does not fit
    waits here, in order, and goes first next round. A peer that does not read at all cannot make the
    broker hold more than MAX_BACKLOG_BYTES for it: beyond, its waiting replies are dropped.

    A round whose commit failed (the store is unreachable) is :meth:`hold`-en whole, until a later
    commit reaches the store and :meth:`release` puts it back in front of what came since.
    """

    def __init__(self, limit: int = DEFAULT_REPLY_LIMIT) -> None:
        self.limit = limit
        self._messages: dict[Envelope, list[Message]] = {}
        self._backlog: dict[Envelope, tuple[deque[bytes], int]] = {}  # peer -> (payloads waiting, their bytes)
        self._held: dict[Envelope, list[Message]] = {}

    def hold(self) -> None:
        """Keep everything queued so far from the next :meth:`deliver`s, until :meth:`release`."""
        for envelope, messages in self.take().items():
            self._held.setdefault(envelope, []).extend(messages)

    def release(self) -> None:
        """What was held goes with the next delivery, before what was queued since."""
        if self._held:
            held, self._held = self._held, {}
            for envelope, messages in self._messages.items():
                held.setdefault(envelope, []).extend(messages)
            self._messages = held

    def put_back(self, messages: dict[Envelope, list[Message]]) -> None:
        """Queue again what :meth:`take` took, before what was queued since."""
        for envelope, queued in self._messages.items():
            messages.setdefault(envelope, []).extend(queued)
        self._messages = messages

    def send(self, envelope: Envelope, message: Message) -> None:
        self._messages.setdefault(envelope, []).append(message)

    def take(self) -> dict[Envelope, list[Message]]:
        """Everything queued so far, by peer; the outbox is empty afterwards."""
        messages, self._messages = self._messages, {}
        return messages

    @property
    def backlogged(self) -> bool:
        """Whether some peer has replies waiting for room."""
        return bool(self._backlog)

    def deliver(self, send: Callable[[Envelope, bytes], bool]) -> list[Envelope]:
        """Encode and send everything, each peer's waiting replies first. ``send`` returns False when the
        peer has no room now, and raises PeerGone when it is gone. Returns the peers that are gone."""
        gone = []
        messages = self.take()
        for envelope in list(self._backlog):
            if envelope not in messages:
                messages[envelope] = []
        for envelope, queued in messages.items():
            # (one message, the common case of a blocking call's reply, without coalesce's generator)
            fresh = iter((_single(queued[0], self.limit),)) if len(queued) == 1 else coalesce(queued, self.limit)
            try:
                if envelope in self._backlog and not self._send_waiting(envelope, send):
                    self._hold(envelope, fresh)  # still no room: the new ones wait behind the old
                    continue
                for payload in fresh:
                    if not send(envelope, payload):
                        self._hold(envelope, itertools.chain((payload,), fresh))
                        break
            except PeerGone:
                self._backlog.pop(envelope, None)
                gone.append(envelope)
        return gone

    def _send_waiting(self, envelope: Envelope, send: Callable[[Envelope, bytes], bool]) -> bool:
        """Send the peer's waiting replies, oldest first, while it has room; whether all went."""
        waiting, size = self._backlog[envelope]
        while waiting:
            if not send(envelope, waiting[0]):
                self._backlog[envelope] = (waiting, size)
                return False
            size -= len(waiting.popleft())
        del self._backlog[envelope]
        return True

    def _hold(self, envelope: Envelope, rest: Iterator[bytes]) -> None:
        """Keep what the peer has no room for, in order, behind what already waits, up to MAX_BACKLOG_BYTES in
        all; the rest is dropped (and, since coalesce is lazy, never even encoded). Only the new payloads are
        looked at: a peer that reads slowly must not make every round walk all it has waiting."""
        waiting, size = self._backlog.get(envelope) or (deque(), 0)
        for payload in rest:
            if size + len(payload) > MAX_BACKLOG_BYTES:
                log.warning("dropping replies to a peer that does not read them (%d bytes waiting)", size)
                break
            waiting.append(payload)
            size += len(payload)
        if waiting:
            self._backlog[envelope] = (waiting, size)


def split_frames(frames: list[bytes]) -> tuple[Envelope, bytes | None]:
    """``(envelope, payload)``: the payload is the last frame, the envelope every frame before it.

    Valid shapes are ``[routing id, payload]`` and ``[routing id, ..., b"", payload]``: an envelope that
    ends in the empty delimiter may carry more frames (a REQ_CORRELATE request id, a proxy's routing id),
    which the reply must repeat. For any other shape the payload is None and the envelope is the one an
    error reply can reach.
    """
    if len(frames) == 2:
        return (frames[0],), frames[1]
    if len(frames) > 2 and frames[-2] == b"":
        return tuple(frames[:-1]), frames[-1]
    if len(frames) > 1 and frames[1] == b"":
        return (frames[0], b""), None
    return (frames[0],), None


class Reply:
    """Where the responses to one incoming message go: one response, or one array for a batch.

    Each request that deserves a response takes a :meth:`slot`; the batch's array is sent once every
    slot has been filled and :meth:`seal` says no more slots will be taken.
    """

    def __init__(self, envelope: Envelope, send: Send, is_batch: bool) -> None:
        self.envelope = envelope
        self._send = send
        self._is_batch = is_batch
        self._responses: list[dict[str, Any]] = []
        self._pending = 0
        self._sealed = not is_batch

    def slot(self) -> Respond:
        if not self._is_batch:
            return self._send_one
        self._pending += 1
        return self._fill

    def _send_one(self, response: dict[str, Any]) -> None:
        self._send(self.envelope, response)

    def _fill(self, response: dict[str, Any]) -> None:
        self._responses.append(response)
        self._pending -= 1
        self._maybe_send_batch()

    def seal(self) -> None:
        self._sealed = True
        self._maybe_send_batch()

    def _maybe_send_batch(self) -> None:
        if self._sealed and self._pending == 0 and self._responses:
            self._send(self.envelope, self._responses)
            self._responses = []


@dataclass(slots=True)
class Waiter:
    """A caller waiting for a task's outcome, answered once: with a response to its request, or (when
    ``notify_task_id`` is set) with a ``zerotask.client.finished`` notification for that task."""

    request_id: jsonrpc.RequestId
    respond: Respond
    timer: Timer | None = None
    notify_task_id: str | None = None
    answered: bool = field(default=False)
    token: int | None = None  # the core's, to cancel the wait
    identity: bytes = b""  # the peer's routing id, for the count of what it is owed
    settled: Callable[[bytes], None] | None = None  # told once the wait is over, with ``identity``

    def __call__(self, record: TaskRecord) -> None:
        """The core's callback (a waiter is its own, to keep a wait small: many may be pending)."""
        if self.settled is not None:
            self.settled(self.identity)
        self.answer_outcome(record.result, record.error)

    def answer(self, response: dict[str, Any]) -> None:
        if self.answered:
            return
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        self.respond(response)

    def answer_outcome(self, result: Any, error: dict[str, Any] | None) -> None:
        if self.notify_task_id is not None:
            task_id = self.notify_task_id
            outcome = {"task_id": task_id, "result": result} if error is None else {"task_id": task_id, "error": error}
            self.answer(jsonrpc.notification(wire.CLIENT_FINISHED, outcome))
        elif error is not None:
            self.answer(jsonrpc.error(self.request_id, error))
        else:
            self.answer(jsonrpc.result(self.request_id, result))

    def answer_error(self, error: ZerotaskError) -> None:
        self.answer_outcome(None, error.to_error_object())


def coalesce(messages: list[Message], limit: int = DEFAULT_REPLY_LIMIT) -> Iterator[bytes]:
    """Encode one peer's messages in order, sending each run of notifications as one JSON-RPC batch:
    a result pushed per task would otherwise cost a message (and a wake-up) per task. Responses stay
    single, as the caller's request was. No payload is larger than ``limit`` bytes (the peers' own
    message limit) unless one notification alone is: a run of notifications too large is split, and a
    response, or a response in a batch, that would pass it is replaced by an error saying so. So a small
    request cannot make the broker build a huge reply. Lazy: what is never sent is never encoded."""
    run: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, dict) and "method" in message:
            run.append(message)
            continue
        if run:
            yield from _notifications(run, limit)
            run = []
        yield _single(message, limit)
    if run:
        yield from _notifications(run, limit)


def _single(message: Message, limit: int) -> bytes:
    """A message encoded alone (a response, a batch's responses, or a notification with no run to join),
    bounded by ``limit`` as :func:`coalesce` says."""
    if isinstance(message, list):
        return _encode_responses(message, limit)
    return _bounded(_encode(message), message, limit)


def _notifications(run: list[dict[str, Any]], limit: int) -> Iterator[bytes]:
    """A run of notifications: one encode for the common case; one by one, in batches under ``limit``,
    when that is too large."""
    encoded = _encode(run[0] if len(run) == 1 else run)
    if len(encoded) <= limit or len(run) == 1:
        yield encoded
        return
    del encoded
    batch: list[bytes] = []
    size = 0
    for notification in run:
        item = _encode(notification)
        if batch and size + len(item) + 1 > limit:
            yield jsonrpc.array(batch)
            batch, size = [], 0
        batch.append(item)
        size += len(item) + 1
    if batch:
        yield jsonrpc.array(batch)


def _encode_responses(responses: list[Any], limit: int) -> bytes:
    """A batch's responses, encoded one by one while they fit in ``limit``; the rest become errors
    (small: once the batch is full, nothing more is encoded in full)."""
    encoded: list[bytes] = []
    total = 2
    for response in responses:
        item = _encode(response) if total <= limit else None
        if item is None or total + len(item) + 1 > limit:
            item = _too_large(response)
        total += len(item) + 1
        encoded.append(item)
    return b"[" + b",".join(encoded) + b"]"


def _bounded(encoded: bytes, message: Any, limit: int) -> bytes:
    return _too_large(message) if len(encoded) > limit and "method" not in message else encoded


def _too_large(response: Any) -> bytes:
    error = jsonrpc.error_object(jsonrpc.INTERNAL_ERROR, data="the reply would be larger than the broker's message limit")
    return jsonrpc.dumps(jsonrpc.error(response.get("id") if isinstance(response, dict) else None, error))


def _encode(message: Message) -> bytes:
    """Encode a message; one that cannot be (a value too deeply nested for orjson, which nodes and
    clients are kept from sending) becomes an internal error, so one bad value never stops the broker."""
    try:
        return jsonrpc.dumps(message)
    except TypeError:
        if isinstance(message, list):
            return b"[" + b",".join(_encode(item) for item in message) + b"]"
        error = jsonrpc.error_object(jsonrpc.INTERNAL_ERROR, "Internal error: the broker could not encode this message")
        if "method" in message:  # a notification: keep what it was about, drop what could not be sent
            params = message.get("params")
            task_id = params.get("task_id") if isinstance(params, dict) else None
            return jsonrpc.dumps(jsonrpc.notification(message["method"], {"task_id": task_id, "error": error}))
        return jsonrpc.dumps(jsonrpc.error(message.get("id"), error))


# A handler of a zerotask.broker.* method: (request, the sender's envelope, where its response goes, or None
# for a notification) -> the result, or DEFERRED when the response will be sent later.
Handler = Callable[[jsonrpc.Request, Envelope, Respond | None], Any]
DEFERRED: Any = object()
