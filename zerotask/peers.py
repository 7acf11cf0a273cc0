"""How the broker answers the peers on its ROUTER socket: envelopes, batches and waiting callers.

A ROUTER socket prefixes every message with the sender's routing id. REQ peers (and DEALER peers that
imitate them) add an empty delimiter frame; bare DEALER peers do not. The reply must use the same
envelope, so it is kept with every request until the response is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zerotask import jsonrpc
from zerotask.exceptions import ZerotaskError
from zerotask.server import Timer

Envelope = tuple[bytes, ...]
Respond = Callable[[dict[str, Any]], None]
Send = Callable[[Envelope, dict[str, Any] | list[Any]], None]


def split_frames(frames: list[bytes]) -> tuple[Envelope, bytes | None]:
    """``(envelope, payload)``; payload is None when the frames are not one of the two valid shapes."""
    if len(frames) == 2:
        return (frames[0],), frames[1]
    if len(frames) == 3 and frames[1] == b"":
        return (frames[0], b""), frames[2]
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
    """A caller waiting for a task's outcome: answered once, with its own request id."""

    request_id: jsonrpc.RequestId
    respond: Respond
    timer: Timer | None = None
    answered: bool = field(default=False)

    def answer(self, response: dict[str, Any]) -> None:
        if self.answered:
            return
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        self.respond(response)

    def answer_outcome(self, result: Any, error: dict[str, Any] | None) -> None:
        if error is not None:
            self.answer(jsonrpc.error(self.request_id, error))
        else:
            self.answer(jsonrpc.result(self.request_id, result))

    def answer_error(self, error: ZerotaskError) -> None:
        self.answer(jsonrpc.error(self.request_id, error.to_error_object()))
