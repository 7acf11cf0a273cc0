"""Section 7 of the JSON-RPC 2.0 specification, example by example, against a real broker and node.

Every example goes over a raw ZeroMQ socket, never the zerotask Client: a REQ socket, a bare DEALER and a
DEALER that adds the empty delimiter frame like REQ does. The requests are the specification's text, byte
for byte, and each reply must be the response the specification shows. Our one addition: a Method not
found error carries the method's name in the error object's optional ``data`` member.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from zerotask.testing import Cluster, scaled

KINDS = ("req", "dealer", "dealer-delimited")


class RawPeer:
    """One raw ZeroMQ socket that talks JSON to the broker. Every wait is bounded (and scaled)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, kind: str) -> None:
        self.kind = kind
        self.socket = context.socket(zmq.REQ if kind == "req" else zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if kind == "req":
            # A notification gets no reply: RELAXED lets the REQ send again anyway, and CORRELATE makes it
            # drop a late reply to an earlier request instead of handing it to the next receive.
            self.socket.setsockopt(zmq.REQ_RELAXED, 1)
            self.socket.setsockopt(zmq.REQ_CORRELATE, 1)
        self.socket.connect(endpoint)

    def send(self, message: Any) -> None:
        """Send ``message``: bytes and str as they are, anything else encoded as JSON."""
        if isinstance(message, str):
            payload = message.encode()
        elif isinstance(message, bytes):
            payload = message
        else:
            payload = json.dumps(message).encode()
        self.socket.send_multipart([b"", payload] if self.kind == "dealer-delimited" else [payload])

    def receive(self, timeout_s: float = 10.0) -> Any:
        """The next reply, decoded; fails the test if none comes within ``timeout_s`` (scaled)."""
        if not self.socket.poll(int(scaled(timeout_s) * 1000)):
            raise AssertionError(f"no reply within {scaled(timeout_s):.1f} s")
        frames = self.socket.recv_multipart()
        if self.kind == "dealer-delimited":
            assert frames[0] == b"", f"the reply lost the envelope it came with: {frames!r}"
            frames = frames[1:]
        assert len(frames) == 1, f"expected one frame after the envelope, got {frames!r}"
        return json.loads(frames[0])

    def call(self, message: Any, timeout_s: float = 10.0) -> Any:
        self.send(message)
        return self.receive(timeout_s)

    def assert_silent(self, seconds: float = 0.5) -> None:
        """Fail if anything arrives within ``seconds`` (scaled)."""
        if self.socket.poll(int(scaled(seconds) * 1000)):
            raise AssertionError(f"expected no reply, got {self.socket.recv_multipart()!r}")

    def assert_served(self) -> None:
        """The peer still gets exactly the answer to its next call (no stray reply is left over)."""
        assert self.call({"jsonrpc": "2.0", "method": "subtract", "params": [5, 3], "id": "check"}) == {
            "jsonrpc": "2.0",
            "result": 2,
            "id": "check",
        }


def in_id_order(value: Any) -> Any:
    """A batch's responses may come in any order: sort them by id, null ids last."""
    if not isinstance(value, list):
        return value
    return sorted(value, key=lambda response: (response.get("id") is None, str(response.get("id"))))


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(params=KINDS)
def peer(request: pytest.FixtureRequest, running: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> RawPeer:
    """A raw socket of each kind, connected to a broker with a node serving tests/tasks.py."""
    return RawPeer(zmq_context, running.endpoint, request.param)


PARSE_ERROR = {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
INVALID_REQUEST = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}

# (request as the specification writes it, the response it shows; None where nothing is returned)
EXAMPLES = [
    pytest.param(
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        {"jsonrpc": "2.0", "result": 19, "id": 1},
        id="positional-params",
    ),
    pytest.param(
        '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        {"jsonrpc": "2.0", "result": -19, "id": 2},
        id="positional-params-swapped",
    ),
    pytest.param(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
        id="named-params",
    ),
    pytest.param(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
        id="named-params-swapped",
    ),
    pytest.param('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None, id="notification"),
    pytest.param('{"jsonrpc": "2.0", "method": "foobar"}', None, id="notification-of-unknown-method"),
    pytest.param(
        '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found", "data": {"method": "foobar"}}, "id": "1"},
        id="non-existent-method",
    ),
    pytest.param('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]', PARSE_ERROR, id="invalid-json"),
    pytest.param('{"jsonrpc": "2.0", "method": 1, "params": "bar"}', INVALID_REQUEST, id="invalid-request-object"),
    pytest.param(
        """[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]""",
        PARSE_ERROR,
        id="batch-invalid-json",
    ),
    pytest.param("[]", INVALID_REQUEST, id="empty-array"),
    pytest.param("[1]", [INVALID_REQUEST], id="invalid-batch-of-one"),
    pytest.param("[1,2,3]", [INVALID_REQUEST, INVALID_REQUEST, INVALID_REQUEST], id="invalid-batch"),
    pytest.param(
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""",
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            INVALID_REQUEST,
            {
                "jsonrpc": "2.0",
                "error": {"code": -32601, "message": "Method not found", "data": {"method": "foo.get"}},
                "id": "5",
            },
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
        id="batch",
    ),
    pytest.param(
        """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""",
        None,
        id="batch-of-notifications",
    ),
]


@pytest.mark.parametrize(("request_text", "expected"), EXAMPLES)
def test_specification_example(peer: RawPeer, request_text: str, expected: Any) -> None:
    peer.send(request_text)
    if expected is None:
        peer.assert_silent()
    else:
        assert in_id_order(peer.receive()) == in_id_order(expected)
    peer.assert_served()


def test_reply_repeats_a_longer_envelope(running: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> None:
    # What the broker sees from a REQ_CORRELATE socket, or from a REQ behind a proxy: more than a routing id.
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(running.endpoint)
    dealer.send_multipart(
        [b"hop", b"\x00\x00\x00\x07", b"", b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}']
    )
    assert dealer.poll(int(scaled(10) * 1000)), "no reply"
    *envelope, payload = dealer.recv_multipart()
    assert envelope == [b"hop", b"\x00\x00\x00\x07", b""]
    assert json.loads(payload) == {"jsonrpc": "2.0", "result": 19, "id": 1}
