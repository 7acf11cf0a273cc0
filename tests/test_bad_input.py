"""Bad input on the broker's request socket, over raw ZeroMQ sockets: each gets an exact error reply (or
costs only its own sender its connection), and afterwards a well-behaved client is still served and every
task queued before the bad input still completes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.test_jsonrpc_spec import RawPeer
from zerotask import TaskError
from zerotask.client import AsyncClient
from zerotask.testing import Cluster, scaled, wait_until

SLEEP_S = 0.2


def request(method: str, params: Any, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}


def result(value: Any, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": value, "id": request_id}


def error(code: int, message: str, request_id: Any, **data: Any) -> dict[str, Any]:
    """An error response; ``data`` (keyword arguments) becomes the error's data member when given."""
    body: dict[str, Any] = {"code": code, "message": message}
    if data:
        body["data"] = data
    return {"jsonrpc": "2.0", "error": body, "id": request_id}


PARSE_ERROR = error(-32700, "Parse error", None)
BAD_FRAMES = {
    "jsonrpc": "2.0",
    "error": {"code": -32600, "message": "Invalid Request", "data": "expected one frame after the envelope"},
    "id": None,
}


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def good(running: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> RawPeer:
    """A well-behaved client: a plain REQ socket, one call at a time."""
    return RawPeer(zmq_context, running.endpoint, "req")


@pytest.fixture
def bad(running: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> RawPeer:
    """The peer that misbehaves: a bare DEALER, which may send anything."""
    return RawPeer(zmq_context, running.endpoint, "dealer")


def queue_sleepers(good: RawPeer, count: int = 4) -> list[str]:
    """Submit ``count`` sleep tasks with ids of our choosing; with two workers most are still queued."""
    task_ids = [f"queued-{i}" for i in range(count)]
    for task_id in task_ids:
        submit = request("zerotask.broker.submit", {"method": "sleep", "args": [SLEEP_S], "task_id": task_id}, task_id)
        assert good.call(submit) == result(task_id, task_id)
    return task_ids


def assert_still_serving(good: RawPeer, queued: list[str]) -> None:
    """A well-behaved client gets correct answers, and every task queued earlier completes."""
    assert good.call(request("add", [2, 3], "add")) == result(5, "add")
    for task_id in queued:
        wait = request("zerotask.broker.result", {"task_id": task_id, "timeout_s": scaled(10)}, task_id)
        assert good.call(wait, timeout_s=15) == result(SLEEP_S, task_id)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1', id="truncated"),
        pytest.param(b"{'jsonrpc': '2.0', 'method': 'add', 'id': 1}", id="single-quotes"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-too-deep"),
    ],
)
def test_malformed_json_gets_a_parse_error(good: RawPeer, bad: RawPeer, payload: bytes) -> None:
    queued = queue_sleepers(good)
    assert bad.call(payload) == PARSE_ERROR
    bad.assert_served()
    assert_still_serving(good, queued)


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(f'{{"jsonrpc": "2.0", "method": "echo", "params": [{nested(199)}], "id": 1}}', id="task-params"),
        # zerotask.broker.notify answers with the ids it does not know: this one would be echoed back
        pytest.param(
            f'{{"jsonrpc": "2.0", "method": "zerotask.broker.notify", "params": [[{nested(300)}]], "id": 1}}', id="echoed"
        ),
    ],
)
def test_json_nested_deeper_than_the_broker_could_send_on_gets_a_parse_error(good: RawPeer, bad: RawPeer, payload: str) -> None:
    # orjson reads 1024 levels but writes only 254: the broker must not take what it could not send on.
    queued = queue_sleepers(good)
    assert bad.call(payload) == PARSE_ERROR
    bad.assert_served()
    assert_still_serving(good, queued)


def test_json_nested_within_the_limit_is_served(good: RawPeer) -> None:
    deep = json.loads(nested(190))
    assert good.call(request("echo", [deep], 1)) == result({"args": [deep], "kwargs": {}}, 1)


@pytest.mark.parametrize(
    ("payload", "request_id"),
    [
        pytest.param(b"5", None, id="number"),
        pytest.param(b'"add"', None, id="string"),
        pytest.param(b"null", None, id="null"),
        pytest.param(b"true", None, id="boolean"),
        pytest.param(b'{"method": "add", "params": [1, 2], "id": 7}', 7, id="no-jsonrpc-member"),
        pytest.param(b'{"jsonrpc": "1.0", "method": "add", "params": [1, 2], "id": 8}', 8, id="wrong-version"),
        pytest.param(b'{"jsonrpc": 2.0, "method": "add", "params": [1, 2], "id": 9}', 9, id="version-not-a-string"),
        pytest.param(b'{"jsonrpc": "2.0", "params": [1, 2], "id": 10}', 10, id="no-method"),
        pytest.param(b'{"jsonrpc": "2.0", "method": "add", "params": 5, "id": 11}', 11, id="params-not-structured"),
        pytest.param(b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": {"a": 1}}', None, id="id-an-object"),
        pytest.param(b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": true}', None, id="id-a-boolean"),
    ],
)
def test_json_that_is_not_a_request_gets_invalid_request(good: RawPeer, bad: RawPeer, payload: bytes, request_id: Any) -> None:
    queued = queue_sleepers(good)
    assert bad.call(payload) == error(-32600, "Invalid Request", request_id)
    bad.assert_served()
    assert_still_serving(good, queued)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("zerotask.broker.submit", {"method": 5}, "parameter 'method' must be a string, not int"),
        ("zerotask.broker.submit", [5], "parameter 'method' must be a string, not int"),
        ("zerotask.broker.submit", {"method": "add", "args": "x"}, "parameter 'args' must be an array, not str"),
        ("zerotask.broker.submit", {"method": "add", "kwargs": []}, "parameter 'kwargs' must be an object, not list"),
        ("zerotask.broker.submit", {"method": "add", "task_id": 7}, "parameter 'task_id' must be a string, not int"),
        ("zerotask.broker.submit", {}, "missing parameter 'method'"),
        ("zerotask.broker.submit", {"method": ""}, "the method name is empty"),
        ("zerotask.broker.submit", {"method": "add", "task_id": ""}, "task_id must have 1 to 128 characters"),
        ("zerotask.broker.submit", {"method": "add", "task_id": "x" * 129}, "task_id must have 1 to 128 characters"),
        ("zerotask.broker.call", ["add", {"a": 1}], "parameter 'args' must be an array, not dict"),
        ("zerotask.broker.status", [5], "parameter 'task_id' must be a string, not int"),
        ("zerotask.broker.status", {"task_id": True}, "parameter 'task_id' must be a string, not bool"),
        ("zerotask.broker.status", [], "missing parameter 'task_id'"),
        ("zerotask.broker.result", {"task_id": "queued-0", "wait": "yes"}, "parameter 'wait' must be a boolean, not str"),
        (
            "zerotask.broker.result",
            {"task_id": "queued-0", "timeout_s": "1"},
            "parameter 'timeout_s' must be an integer or a number, not str",
        ),
    ],
)
def test_control_method_with_wrong_params_gets_invalid_params(
    good: RawPeer, bad: RawPeer, method: str, params: Any, message: str
) -> None:
    queued = queue_sleepers(good)
    assert bad.call(request(method, params, "bad")) == error(-32602, message, "bad")
    bad.assert_served()
    assert_still_serving(good, queued)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(["no-such-task"], id="positional"),
        pytest.param({"task_id": "no-such-task", "wait": False}, id="without-waiting"),
        pytest.param({"task_id": "no-such-task", "timeout_s": 5}, id="waiting"),
    ],
)
@pytest.mark.parametrize("method", ["zerotask.broker.status", "zerotask.broker.result"])
def test_unknown_task_id_gets_unknown_task(good: RawPeer, bad: RawPeer, method: str, params: Any) -> None:
    queued = queue_sleepers(good)
    reply = bad.call(request(method, params, "bad"), timeout_s=2)  # an error at once, not after timeout_s
    assert reply == error(-32001, "unknown task id 'no-such-task'", "bad", task_id="no-such-task")
    bad.assert_served()
    assert_still_serving(good, queued)


@pytest.mark.parametrize(
    ("frames", "envelope"),
    [
        pytest.param([b"x", b"y", b"z"], [], id="three-frames"),
        pytest.param([b"", b"a", b"b"], [b""], id="delimiter-then-two-frames"),
        pytest.param([b"x", b""], [], id="empty-last-frame"),
    ],
)
def test_garbage_frames_get_an_error_and_the_broker_keeps_serving(
    good: RawPeer, bad: RawPeer, frames: list[bytes], envelope: list[bytes]
) -> None:
    queued = queue_sleepers(good)
    bad.socket.send_multipart(frames)
    assert bad.socket.poll(int(scaled(10) * 1000)), "no reply to garbage frames"
    *reply_envelope, payload = bad.socket.recv_multipart()
    assert reply_envelope == envelope
    assert json.loads(payload) == BAD_FRAMES
    bad.assert_served()
    assert_still_serving(good, queued)


def test_oversized_message_disconnects_only_its_sender(cluster: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> None:
    cluster.start_broker("--max-message-bytes", "100000")
    cluster.start_node("tests.tasks", workers=2)
    good = RawPeer(zmq_context, cluster.endpoint, "req")
    queued = queue_sleepers(good)
    waiting = RawPeer(zmq_context, cluster.endpoint, "dealer")
    waiting.send(request("sleep", [0.5], "in-flight"))  # a call in flight while another peer misbehaves
    big = RawPeer(zmq_context, cluster.endpoint, "dealer")
    big.assert_served()  # connected for sure before the big message
    monitor = big.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    big.send(request("echo", ["x" * 1_000_000], "big"))

    deadline_ms = int(scaled(10) * 1000)
    assert monitor.poll(deadline_ms), "the broker did not disconnect the peer that sent 1 MB"
    assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    assert waiting.receive() == result(0.5, "in-flight")
    under_limit = "y" * 50_000
    assert good.call(request("echo", [under_limit], "under")) == result({"args": [under_limit], "kwargs": {}}, "under")
    assert_still_serving(good, queued)
    big.assert_served()  # ZeroMQ reconnects it, and the broker serves it like any new peer
    big.socket.disable_monitor()


@pytest.mark.parametrize("method", ["zerotask.broker.call", "zerotask.broker.submit"])
def test_peer_that_vanishes_mid_request_does_not_lose_its_task(
    running: Cluster, zmq_context: zmq.Context[zmq.Socket[bytes]], good: RawPeer, method: str
) -> None:
    queued = queue_sleepers(good)
    vanishing = RawPeer(zmq_context, running.endpoint, "req")
    assert vanishing.call(request("zerotask.broker.info", [], 0))["id"] == 0  # connected for sure
    # Linger just long enough to deliver the request; then the peer is gone before any reply.
    vanishing.socket.setsockopt(zmq.LINGER, int(scaled(5) * 1000))
    vanishing.send(request(method, {"method": "sleep", "args": [SLEEP_S], "task_id": "vanished"}, 1))
    vanishing.socket.close()

    def status() -> Any:
        return good.call(request("zerotask.broker.status", ["vanished"], "status"))

    wait_until(lambda: status() == result("FINISHED", "status"), 10, "the vanished peer's task to finish")
    wait = request("zerotask.broker.result", {"task_id": "vanished", "timeout_s": scaled(5)}, "vanished")
    assert good.call(wait) == result(SLEEP_S, "vanished")
    assert_still_serving(good, queued)


def test_results_that_together_exceed_the_message_limit_still_arrive(cluster: Cluster) -> None:
    """Each result fits the broker's limit, but a node's batch of them would not: the node splits it."""
    cluster.start_broker("--max-message-bytes", "100000")
    cluster.start_node("tests.tasks", workers=2)
    with AsyncClient(cluster.endpoint, timeout=scaled(30)) as client:
        # Short tasks first: the node learns they are short and hands them out (and gets them back) in batches.
        assert sum(handle.result(scaled(30)) for handle in [client.add(i, 0) for i in range(500)]) == sum(range(500))
        handles = [client.text(40_000) for _ in range(60)]
        assert [len(handle.result(scaled(30))) for handle in handles] == [40_000] * 60
        with pytest.raises(TaskError) as raised:
            client.text(200_000).result(scaled(30))  # one result over the limit fails clearly
        assert raised.value.type == "ResultTooLarge"
