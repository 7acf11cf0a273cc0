"""zerotask.sockets' hot-path helpers, which call pyzmq's Cython methods directly: they must behave as
the pyzmq calls they stand for, on real sockets (a ROUTER and DEALERs over ipc:// and tcp://)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zerotask import sockets
from zerotask.testing import free_port


@pytest.fixture(params=["ipc", "tcp"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A bound ROUTER and a DEALER connected to it (and known to it: it has said hello)."""
    endpoint = f"ipc://{tmp_path}/router" if request.param == "ipc" else f"tcp://127.0.0.1:{free_port()}"
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.bind(endpoint)
    dealer.connect(endpoint)
    dealer.send(b"hello")
    assert router.poll(5000)
    router.recv_multipart()
    yield router, dealer
    router.close(linger=0)
    dealer.close(linger=0)
    context.term()


def test_a_router_receiver_reads_messages_of_any_shape_whole_and_in_order(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    receive = sockets.router_receiver(router)
    with pytest.raises(zmq.Again):
        receive()  # nothing waits
    shapes = [[b"one"], [b"", b"req-like"], [b"a", b"", b"b", b"x" * 100_000], [b""]]
    for shape in shapes:
        dealer.send_multipart(shape)
    for shape in shapes:
        assert sockets.readable(router, 5000)
        frames = receive()
        assert frames[1:] == shape
        assert len(frames[0]) > 0  # the routing id the ROUTER put first
    assert not sockets.waiting(router)


def test_readable_waits_at_most_its_timeout_and_says_whether_a_message_waits(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    assert not sockets.readable(dealer, 0)
    assert not sockets.readable(dealer, 50)
    send = sockets.sender(router)
    dealer.send(b"ping")
    assert sockets.readable(router, 5000)
    peer, payload = sockets.router_receiver(router)()
    assert payload == b"ping"
    send(peer, sockets.MORE_NOBLOCK)
    send(b"pong", sockets.NOBLOCK)
    assert sockets.readable(dealer, 5000)
    assert sockets.waiting(dealer)
    assert sockets.recv_frame(dealer) == b"pong"
    assert not sockets.waiting(dealer)


def test_readable_refuses_a_closed_socket_rather_than_poll_something_else(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    _, dealer = pair
    dealer.close(linger=0)
    with pytest.raises(zmq.ZMQError):
        sockets.readable(dealer, 0)
