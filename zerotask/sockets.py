"""The one place zerotask makes ZeroMQ sockets, with their options and their CURVE keys.

The broker binds a ROUTER for requests and an XPUB for events; nodes and clients connect DEALERs, and
event watchers a SUB. Every socket gets ``LINGER=0``: a peer may be dead, and closing must never wait for it.
Given :class:`CurveKeys`, a socket is CURVE-encrypted (the broker's as the server, whose ZAP handler,
:mod:`zerotask.auth`, decides who may connect); the keys are set before it binds or connects.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

_SCHEMES = ("tcp://", "ipc://", "inproc://")
REPLY_HWM = 32  # messages queued in ZeroMQ for one peer of the broker; the broker holds the rest (bounded)
REQUEST_HWM = 100  # messages from one peer that ZeroMQ holds before the broker reads them (a round reads 1,000)
MAX_SUBSCRIPTION_BYTES = 1024  # a subscription message on the event socket; larger ones disconnect the peer
# pyzmq's flags and options as plain ints: its enums cost a call (a few µs) at each use on the hot path.
NOBLOCK, MORE_NOBLOCK = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# The Cython methods under pyzmq's Socket, for the hot path: its Python send adds options zerotask never
# uses (routing_id, group) for about 1,500 instructions a frame, and every attribute read on its Socket
# goes through AttributeSetter.__getattr__'s hook (about 800 more). Counted with callgrind.
# ``send_frame(sock, frame, flags)`` and ``recv_frame(sock, flags)`` are sock.send and sock.recv, for less.
send_frame: Callable[..., Any] = zmq.backend.Socket.send
recv_frame: Callable[..., Any] = zmq.backend.Socket.recv
_get: Callable[..., Any] = zmq.backend.Socket.get
_zmq_poll: Callable[..., list[tuple[Any, int]]] = zmq.zmq_poll


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE key pair (Z85, as in a certificate file) and, for a client, the server's public key: with
    ``server`` None the socket is a CURVE server (the broker's)."""

    public: bytes
    secret: bytes
    server: bytes | None = None

    def apply(self, sock: Socket) -> None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        if self.server is None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
        else:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)

    def __repr__(self) -> str:  # never show the secret in a log or a traceback
        return f"CurveKeys(public={self.public!r}, server={self.server!r})"


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


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """The broker endpoints a client or node may use: one endpoint, several separated by commas
    (``"tcp://a:5555,tcp://b:5555"``), or a sequence of them, one per item. Raises ValueError naming
    the one that is not an endpoint (see :func:`check_endpoint`), or for an empty list or a repeat."""
    if isinstance(endpoints, str):
        items: list[Any] = endpoints.split(",")
    else:
        items = list(endpoints) if isinstance(endpoints, list | tuple) else [endpoints]  # anything else: refused below
    if not items or items == [""]:
        raise ValueError("no broker endpoint given: expected tcp://HOST:PORT, or several separated by commas")
    parsed: list[str] = []
    for number, item in enumerate(items, 1):
        where = f" (endpoint {number} of {endpoints!r})" if len(items) > 1 else ""
        if isinstance(item, str) and "," in item:  # a sequence's item: a comma would pass for part of a host
            raise ValueError(f"invalid endpoint {item!r}: one endpoint per item, no commas")
        if isinstance(item, str) and not item.strip():
            raise ValueError(f"empty endpoint{where}")
        try:
            endpoint = check_endpoint(item.strip() if isinstance(item, str) else item)
        except ValueError as problem:
            raise ValueError(f"{problem}{where}") from None
        if endpoint in parsed:
            raise ValueError(f"endpoint {endpoint!r} given twice{where}")
        parsed.append(endpoint)
    return parsed


def is_local(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint``: ipc:// and inproc://, or tcp:// on a loopback
    address (127.0.0.0/8, ::1, localhost). A wildcard, an interface name or any other address is not."""
    scheme, _, address = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_router(context: Context, endpoint: str, max_message_bytes: int, curve: CurveKeys | None = None) -> Socket:
    """The broker's request socket, bound. ROUTER_MANDATORY makes a send to a vanished peer fail instead
    of vanishing silently; ROUTER_HANDOVER lets a node that reconnects with its routing id take over;
    MAXMSGSIZE disconnects a peer that sends more than the broker accepts."""
    sock: Socket = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # A peer that never reads may have at most REPLY_HWM messages queued for it in ZeroMQ, which counts
    # messages, not bytes; beyond, a send to it fails at once (ROUTER_MANDATORY, NOBLOCK) and the broker
    # keeps what waits itself, in order and bounded in bytes (replies.Outbox). Incoming messages are
    # bounded by MAXMSGSIZE each, and by REQUEST_HWM waiting per peer: beyond, ZeroMQ stops reading that
    # peer's connection, and TCP pushes back on it (nothing is lost). Unbounded, a peer sending faster than
    # the broker parses had everything it sent buffered here (300 messages of 2 MB: 641 MiB).
    sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
    sock.setsockopt(zmq.RCVHWM, REQUEST_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    sock.bind(endpoint)
    return sock


def event_publisher(context: Context, endpoint: str, curve: CurveKeys | None = None) -> Socket:
    """The broker's event socket, bound: an XPUB, so the broker learns whether anyone listens."""
    sock: Socket = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    if curve is not None:
        curve.apply(sock)
    sock.bind(endpoint)
    return sock


def dealer(
    context: Context, endpoint: str, routing_id: bytes | None = None, unbounded: bool = False, curve: CurveKeys | None = None
) -> Socket:
    """A DEALER connected to the broker. ``routing_id`` lets a node reconnect as itself; ``unbounded``
    (high-water marks 0) suits a peer that does its own flow control and must never drop or block."""
    sock = _dealer(context, routing_id, unbounded, curve)
    sock.connect(endpoint)
    return sock


def watched_dealer(
    context: Context,
    endpoint: str,
    events: int,
    routing_id: bytes | None = None,
    unbounded: bool = False,
    curve: CurveKeys | None = None,
    retry_max_ms: int = 0,
) -> tuple[Socket, Socket]:
    """A :func:`dealer` and the monitor that receives its connection ``events`` (``zmq.EVENT_*``),
    watched from before it connects. Close both with :func:`close_watched`. ``retry_max_ms``: ZeroMQ
    retries a connection every 100 ms; with this, ever less often, up to this interval (fewer events
    for a monitor that goes unread for a while)."""
    sock = _dealer(context, routing_id, unbounded, curve)
    if retry_max_ms:
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, retry_max_ms)
    monitor = watch(sock, events)
    sock.connect(endpoint)
    return sock, monitor


_MONITORS = itertools.count(1)


def watch(sock: Socket, events: int) -> Socket:
    """A PAIR socket that receives ``sock``'s connection ``events`` (pyzmq's ``get_monitor_socket``, but
    unbounded: libzmq's I/O thread blocks on a full monitor pipe, which would stall every socket of the
    context, so the pipe has no high-water mark; subscribe only to rare events). Each event is a
    two-frame message (:func:`zmq.utils.monitor.parse_monitor_message`)."""
    address = f"inproc://zerotask-monitor-{next(_MONITORS)}"
    sock.monitor(address, events)
    monitor: Socket = sock.context.socket(zmq.PAIR)
    monitor.setsockopt(zmq.RCVHWM, 0)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return monitor


def close_watched(sock: Socket, monitor: Socket | None, linger_ms: int = 0) -> None:
    """Close a socket and its monitor. The monitoring stops first: an event sent to a closed monitor
    would block libzmq's I/O thread for ever."""
    if monitor is not None:
        sock.disable_monitor()
        monitor.close(linger=0)
    sock.close(linger=linger_ms)


def _dealer(context: Context, routing_id: bytes | None, unbounded: bool, curve: CurveKeys | None) -> Socket:
    sock: Socket = context.socket(zmq.DEALER)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    if unbounded:
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    if curve is not None:
        curve.apply(sock)
    return sock


def subscriber(context: Context, endpoint: str, curve: CurveKeys | None = None) -> Socket:
    """A SUB connected to the broker's event socket, subscribed to everything."""
    sock: Socket = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    return sock


def bound_endpoint(sock: Socket) -> str:
    """The endpoint a socket is bound to, with a port chosen by the system filled in."""
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


def waiting(sock: Socket) -> bool:
    """Whether a message waits to be read. A loop that reads what came asks this after each message
    rather than reading until a read fails: the zmq.Again of that read costs about ten times the question."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def readable(sock: Socket, timeout_ms: int) -> bool:
    """Whether a message waits on ``sock``, waiting up to ``timeout_ms`` (-1: for ever) for one:
    ``sock.poll``, without the Poller it builds and the dict it makes of its answer each time."""
    if sock.closed:
        raise zmq.ZMQError(zmq.ENOTSUP)  # (as sock.poll: a closed socket's handle would poll descriptor 0)
    return bool(_zmq_poll([(sock, _POLLIN)], timeout_ms))


def sender(sock: Socket) -> Callable[[bytes, int], None]:
    """``send(frame, flags)`` on ``sock``: what ``sock.send`` does for bytes, for a fraction of its cost."""
    return functools.partial(send_frame, sock)


def router_receiver(sock: Socket) -> Callable[[], list[bytes]]:
    """What reads one message from a ROUTER ``sock`` as its frames (NOBLOCK: raises zmq.Again when none
    waits). A ROUTER puts the sender's routing id first, always followed by the message's own frames, so
    only the frames after it are asked whether more follow, and that by the frame itself: asking the
    socket (RCVMORE, as recv_multipart does) costs an enum conversion, about 8,000 instructions a frame."""
    recv = functools.partial(recv_frame, sock)

    def receive_frames() -> list[bytes]:
        frames = [recv(NOBLOCK)]
        frame = recv(NOBLOCK, False)
        frames.append(frame.bytes)
        while frame.more:
            frame = recv(NOBLOCK, False)
            frames.append(frame.bytes)
        return frames

    return receive_frames
