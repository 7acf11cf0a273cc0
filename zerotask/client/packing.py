"""Packing an AsyncClient's requests into messages the broker takes: at most BATCH_SIZE requests each
(the broker reads a batch at once), and at most its size limit less MESSAGE_ROOM bytes (a larger message
makes ZeroMQ drop the connection, and what follows it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from zerotask import jsonrpc

BATCH_SIZE = 1000  # requests per message at most
# Until the broker's first pong tells its own limit: the broker's default (zerotask.broker.transport).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MESSAGE_ROOM = 4096  # bytes kept free under the broker's limit


def pack(batch: list[dict[str, Any]], max_message_bytes: int, refuse: Callable[[dict[str, Any], int], None]) -> Iterator[bytes]:
    """The messages that carry ``batch``, in order. A request too large for any message is left out:
    ``refuse(request, its size in bytes)`` is called for it instead."""
    max_bytes = max_message_bytes - MESSAGE_ROOM
    for start in range(0, len(batch), BATCH_SIZE):
        chunk = batch[start : start + BATCH_SIZE]
        payload = jsonrpc.dumps(chunk[0] if len(chunk) == 1 else chunk)
        if len(payload) <= max_bytes:
            yield payload
        else:  # rare (large arguments): encode one by one, and fill messages up to the limit
            yield from _by_size(chunk, max_bytes, refuse)


def _by_size(chunk: list[dict[str, Any]], max_bytes: int, refuse: Callable[[dict[str, Any], int], None]) -> Iterator[bytes]:
    group: list[bytes] = []
    size = 1  # a JSON array of n items: "[", each item and a "," or the closing "]"
    for request in chunk:
        encoded = jsonrpc.dumps(request)
        if len(encoded) > max_bytes:
            refuse(request, len(encoded))
            continue
        if group and size + len(encoded) + 1 > max_bytes:
            yield jsonrpc.array(group)
            group, size = [], 1
        group.append(encoded)
        size += len(encoded) + 1
    if group:
        yield jsonrpc.array(group)
