"""The one place zerotask makes ZeroMQ sockets, with their options (and, later, their CURVE keys).

The broker binds a ROUTER for requests and an XPUB for events; nodes and clients connect DEALERs, and
event watchers a SUB. Every socket gets ``LINGER=0``: a peer may be dead, and closing must never wait for it.
"""

from __future__ import annotations

from typing import Any

import zmq

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

_SCHEMES = ("tcp://", "ipc://", "inproc://")


def check_endpoint(endpoint: Any, bind: bool = False) -> str:
    """Return ``endpoint`` if it is a ZeroMQ endpoint zerotask can use, else raise ValueError saying why.

    ZeroMQ itself reports a malformed endpoint late and vaguely (or, for ``connect``, only in the
    background); checking it up front lets a command refuse to start with a clear message.
    """
    expected = "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    if not isinstance(endpoint, str) or not endpoint.startswith(_SCHEMES):
        raise ValueError(f"invalid endpoint {endpoint!r}: {expected}")
    scheme, _, address = endpoint.partition("://")
    if not address:
        raise ValueError(f"invalid endpoint {endpoint!r}: {expected}")
    if scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"invalid endpoint {endpoint!r}: {expected}")
        wildcard = bind and port in ("*", "0")
        if not wildcard and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"invalid endpoint {endpoint!r}: the port must be a number from 1 to 65535")
    return endpoint


def request_router(context: Context, endpoint: str, max_message_bytes: int) -> Socket:
    """The broker's request socket, bound. ROUTER_MANDATORY makes a send to a vanished peer fail instead
    of vanishing silently; ROUTER_HANDOVER lets a node that reconnects with its routing id take over;
    MAXMSGSIZE disconnects a peer that sends more than the broker accepts."""
    sock: Socket = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.SNDHWM, 0)  # replies are never dropped: flow control is by credit
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def event_publisher(context: Context, endpoint: str) -> Socket:
    """The broker's event socket, bound: an XPUB, so the broker learns whether anyone listens."""
    sock: Socket = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def dealer(context: Context, endpoint: str, routing_id: bytes | None = None, unbounded: bool = False) -> Socket:
    """A DEALER connected to the broker. ``routing_id`` lets a node reconnect as itself; ``unbounded``
    (high-water marks 0) suits a peer that does its own flow control and must never drop or block."""
    sock: Socket = context.socket(zmq.DEALER)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    if unbounded:
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    return sock


def subscriber(context: Context, endpoint: str) -> Socket:
    """A SUB connected to the broker's event socket, subscribed to everything."""
    sock: Socket = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def bound_endpoint(sock: Socket) -> str:
    """The endpoint a socket is bound to, with a port chosen by the system filled in."""
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))
