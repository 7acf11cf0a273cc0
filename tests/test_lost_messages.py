"""Messages lost on a connection that ZeroMQ dropped and made again by itself (docs/protocol.md 8.4, 8.5).

ZeroMQ hides a dropped connection: a DEALER connects again by itself, and what was in flight either way is
gone. Outcomes in a dying broker's buffers, a credit request, tasks sent to a node: each lost one left the
node and its broker with different views of what the node holds, and a task ran twice or waited for ever;
an answer lost on its way to a client left the client waiting. The node now counts what it sends (a ping's
answer confirms outcomes only if the broker heard as many, a heartbeat says how many messages went) and
connects again when its connection drops; the clients ask again. The tests lose messages for real: a
frozen broker killed with outcomes in its buffers, and a TCP relay between a peer and the broker that
swallows what the broker sends and then cuts the connection.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from tests.test_failover import lose, traced_task
from tests.test_fuzz import Context, ask, connect_node, dealer, receive, rpc
from tests.test_fuzz import zmq_context as zmq_context
from zerotask import wire
from zerotask.client import AsyncClient, Client
from zerotask.node.delivery import Deliveries
from zerotask.testing import Cluster, scaled, wait_until


class Relay(threading.Thread):
    """A TCP relay from a port of its own to ``target_port`` on 127.0.0.1, for a node's connection to its
    broker. ``swallow()`` drops what the broker sends from then on; ``cut()`` resets the connections (both
    ways, as a dropped network path would) and relays the next ones as before."""

    def __init__(self, target_port: int) -> None:
        super().__init__(daemon=True)
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, tuple[socket.socket, bool]] = {}  # socket -> (its other end, from broker)
        self._swallowing = False
        self.swallowed = 0  # bytes the broker sent that were dropped
        self._cut = threading.Event()
        self._done = threading.Event()

    def swallow(self) -> None:
        self._swallowing = True

    def cut(self) -> None:
        self._cut.set()
        wait_until(lambda: not self._cut.is_set(), 10, "the relay to cut its connections")

    def run(self) -> None:
        while not self._done.is_set():
            if self._cut.is_set():
                for sock in list(self._peers):
                    self._close(sock)
                self._swallowing = False
                self._cut.clear()
            for key, _ in self._selector.select(0.02):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    node, _ = self._listener.accept()
                    broker = socket.create_connection(self._target)
                    self._peers[node], self._peers[broker] = (broker, False), (node, True)
                    self._selector.register(node, selectors.EVENT_READ)
                    self._selector.register(broker, selectors.EVENT_READ)
                elif sock in self._peers:
                    self._relay(sock)

    def _relay(self, sock: socket.socket) -> None:
        other, from_broker = self._peers[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(sock)
        elif from_broker and self._swallowing:
            self.swallowed += len(data)
        else:
            other.sendall(data)

    def _close(self, sock: socket.socket) -> None:
        """Reset ``sock`` and its other end (once: the other end's turn finds them gone)."""
        if sock not in self._peers:
            return
        other, _ = self._peers.pop(sock)
        del self._peers[other]
        for end in (sock, other):
            self._selector.unregister(end)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            end.close()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self.join(10)
        for sock in list(self._peers):
            self._close(sock)
        self._listener.close()


def test_tasks_sent_on_a_connection_that_drops_are_not_lost(cluster: Cluster) -> None:
    """The broker sends a task to its node; the connection drops before it arrives, and ZeroMQ makes it
    again. The broker took the task as the node's, the node never had it: it waited for ever. Now the node,
    told by its socket's monitor that the connection dropped, connects again, and the task is queued again."""
    cluster.start_broker()
    with Relay(int(cluster.endpoint.rsplit(":", 1)[1])) as relay:
        node = cluster.start_node("tests.tasks", extra=["--broker", f"tcp://127.0.0.1:{relay.port}"])
        client = cluster.client()
        assert client.add(1, 2) == 3
        relay.swallow()
        task_id = client.submit("add", 2, 3)
        wait_until(lambda: relay.swallowed > 0, 10, "the task to be sent to the node")
        relay.cut()
        assert client.result(task_id, timeout=scaled(20)) == 5, node.output()


def test_an_answer_lost_on_a_connection_that_drops_reaches_a_blocking_client(cluster: Cluster) -> None:
    """The broker's answer to a blocking call is lost as the client's connection drops; ZeroMQ makes it
    again. The client waited for its timeout (for ever, without one). Now, at its next ping, it sees on its
    socket's monitor that the connection dropped and asks again: the task, named by the client, is found."""
    cluster.start_broker()
    cluster.start_node("tests.tasks")
    with Relay(int(cluster.endpoint.rsplit(":", 1)[1])) as relay:
        with Client(f"tcp://127.0.0.1:{relay.port}", timeout=scaled(20)) as client:
            assert client.add(1, 2) == 3
            relay.swallow()
            answered: list[Any] = []
            caller = threading.Thread(target=lambda: answered.append(client.add(2, 3)), daemon=True)
            caller.start()
            wait_until(lambda: relay.swallowed > 0, 10, "the answer to be sent to the client")
            relay.cut()
            caller.join(scaled(20))
            assert answered == [5]


def test_an_outcome_lost_on_a_connection_that_drops_reaches_an_async_client(cluster: Cluster) -> None:
    """The same for the AsyncClient: the outcome the broker pushes is lost as the connection drops. The
    client, told by its socket's monitor, connects again and submits again what has no outcome."""
    cluster.start_broker()
    cluster.start_node("tests.tasks")
    with Relay(int(cluster.endpoint.rsplit(":", 1)[1])) as relay:
        with AsyncClient(f"tcp://127.0.0.1:{relay.port}", timeout=scaled(20)) as client:
            assert client.add(1, 2).result() == 3
            relay.swallow()
            handle = client.add(2, 3)
            wait_until(lambda: relay.swallowed > 0, 10, "the outcome to be sent to the client")
            relay.cut()
            assert handle.result() == 5


def test_outcomes_lost_with_a_dead_broker_are_not_confirmed_by_its_successor(sqlite_cluster: Cluster, tmp_path: Path) -> None:
    """The outcome goes into the buffers of a frozen broker, which is then killed; ZeroMQ reconnects the
    node's socket to the broker started in its place before the node notices any silence (liveness 30), and
    the node's next ping reaches that broker. Order alone would take its answer as proof that the outcome
    arrived (and the task, queued again at recovery, would run twice); the count in the answer says it did not."""
    cluster = sqlite_cluster
    node, client, trace, task_id = traced_task(cluster, tmp_path, "--liveness", "30")
    lose(cluster, "stop")
    wait_until(lambda: "end" in trace.read_text(), 20, "the task to end")
    time.sleep(0.05)  # its outcome is sent, into the frozen broker's socket buffer
    assert cluster.broker is not None
    cluster.broker.kill()
    cluster.start_broker()
    assert client.result(task_id, timeout=scaled(30)) == 1.0
    # It ran once. (Without the count it ran twice, 3 times in 3; a heartbeat's ping that happens to go out
    # before the kill is lost too, and then the node hears of the new broker when its next heartbeat is
    # refused: the node's log need not say "did not get every outcome".)
    assert trace.read_text().split() == ["start", "end"], node.output()


def test_a_ping_from_a_node_is_answered_with_the_outcomes_heard_from_it(cluster: Cluster, zmq_context: Context) -> None:
    """docs/protocol.md 5.7 and 8.4, with raw sockets: the count is of the outcomes reported since the node's
    connect, whether or not they were of tasks it held; null for a peer that is not a connected node."""
    cluster.start_broker()
    stranger = dealer(zmq_context, cluster.endpoint, b"stranger")
    answer = ask(stranger, rpc(wire.PING, {"finished": 4}, "p0"), "p0")
    assert answer["result"]["finished"] is None
    assert "finished" not in ask(stranger, rpc(wire.PING, None, "p1"), "p1")["result"]  # a client's ping, as before
    assert ask(stranger, rpc(wire.PING, {"finished": "4"}, "p2"), "p2")["error"]["code"] == -32602
    node = connect_node(zmq_context, cluster.endpoint, b"raw-node", ["add"])
    outcomes = [{"task_id": f"nobody-{n}", "result": n} for n in range(3)]
    node.send(rpc(wire.FINISHED_TASKS, {"tasks": outcomes[:2]}, notification=True))
    node.send(rpc(wire.FINISHED_TASKS, {"tasks": outcomes[2:]}, notification=True))
    assert ask(node, rpc(wire.PING, {"finished": 3}, "p3"), "p3")["result"]["finished"] == 3
    connect_node(zmq_context, cluster.endpoint, b"raw-node", ["add"]).close(linger=0)  # a connect starts the count again
    node.close(linger=0)


def test_a_ping_answer_confirms_outcomes_only_when_its_count_matches() -> None:
    deliveries = Deliveries()
    deliveries.sent([{"task_id": "a"}, {"task_id": "b"}])
    first = deliveries.ping()
    assert first is not None and first[1] == {"finished": 2}
    deliveries.sent([{"task_id": "c"}])
    second = deliveries.ping()
    assert second is not None and second[1] == {"finished": 3} and deliveries.ping() is None
    assert deliveries.answered(first[0], {"instance": "x"})  # a broker of an earlier version: order is taken as proof
    assert not deliveries.answered(second[0], {"finished": 2})  # one lost on the way
    assert not deliveries.answered(second[0], {"finished": None})  # a broker that does not know the node
    assert [outcome["task_id"] for outcome in deliveries.unconfirmed()] == ["c"]
    deliveries.sent([{"task_id": "c"}])
    third = deliveries.ping()
    assert third is not None and third[1] == {"finished": 1}  # counted from the new connect
    assert deliveries.answered(third[0], {"finished": 1}) and deliveries.unconfirmed() == []


def test_a_heartbeat_that_counts_more_messages_than_arrived_makes_the_node_connect_again(
    cluster: Cluster, zmq_context: Context
) -> None:
    """docs/protocol.md 8.5, with raw sockets: a heartbeat's ``sent`` is the number of messages the node sent
    since its connect, before the heartbeat; a count above what arrived (a credit request lost on a
    connection ZeroMQ made again by itself, say) gets zerotask.node.reconnect, a right one nothing."""
    cluster.start_broker()
    node = connect_node(zmq_context, cluster.endpoint, b"counted", ["add"])

    def methods_until_pong(request_id: str) -> list[Any]:
        """Ping, and the methods of what the broker sent before its answer."""
        node.send(rpc(wire.PING, None, request_id))
        seen: list[Any] = []
        while True:
            for item in receive(node):
                if item.get("id") == request_id and "method" not in item:
                    return seen
                seen.append(item.get("method"))

    node.send(rpc(wire.REQUEST, {"credit": 0}, notification=True))
    node.send(rpc(wire.HEARTBEAT, {"sent": 1}, notification=True))  # right: the request arrived
    assert wire.NODE_RECONNECT not in methods_until_pong("a")
    node.send(rpc(wire.HEARTBEAT, {"sent": 5}, notification=True))  # 3 were sent (request, heartbeat, ping): 2 lost
    assert wire.NODE_RECONNECT in methods_until_pong("b")
    node.close(linger=0)


def test_a_working_node_is_never_asked_to_connect_again(cluster: Cluster) -> None:
    """The count the Python node puts in its heartbeats agrees with what the broker hears, through calls,
    outcomes, credit requests and idle heartbeats."""
    cluster.start_broker()
    node = cluster.start_node("tests.tasks", workers=2)
    with Client(cluster.endpoint, timeout=scaled(30), **cluster.peer("client")) as client:
        for n in range(200):
            assert client.add(n, 1) == n + 1
        time.sleep(3.5)  # idle: three heartbeats, each with its count
        assert client.add(1, 1) == 2
    assert cluster.broker is not None
    assert "asking it to connect again" not in cluster.broker.output()
    assert node.output().count("connecting to") == 1, node.output()
