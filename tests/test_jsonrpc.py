"""Unit tests of the pure parts of the wire format: zerotask.jsonrpc, zerotask.broker.replies' envelopes
and batched replies, and the Dispatcher's error objects. No sockets, no processes."""

from __future__ import annotations

from typing import Any

import pytest

from zerotask import jsonrpc, wire
from zerotask.broker.replies import Envelope, Reply, Waiter, coalesce, split_frames
from zerotask.exceptions import TaskTimeout
from zerotask.loop import Timer
from zerotask.task import Dispatcher, task

# ---- error codes -----------------------------------------------------------------------------------


def test_error_codes_are_the_specifications() -> None:
    assert (jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.METHOD_NOT_FOUND) == (-32700, -32600, -32601)
    assert (jsonrpc.INVALID_PARAMS, jsonrpc.INTERNAL_ERROR) == (-32602, -32603)
    assert jsonrpc.ERROR_MESSAGES == {
        -32700: "Parse error",
        -32600: "Invalid Request",
        -32601: "Method not found",
        -32602: "Invalid params",
        -32603: "Internal error",
    }


def test_zerotask_codes_are_in_the_range_left_to_implementations() -> None:
    codes = [wire.TASK_FAILED, wire.UNKNOWN_TASK, wire.TIMED_OUT, wire.NOT_READY, wire.REVOKED_CODE]
    assert codes == [-32000, -32001, -32002, -32003, -32004]
    assert all(-32099 <= code <= -32000 for code in codes)


# ---- loads / dumps ---------------------------------------------------------------------------------


def test_dumps_and_loads_round_trip() -> None:
    message = {"jsonrpc": "2.0", "method": "add", "params": [1, 2.5, "é", None, True], "id": "x"}
    assert jsonrpc.loads(jsonrpc.dumps(message)) == message
    assert jsonrpc.loads('{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("data", [b"", b"{", b"\xff", b"NaN", b"{'a': 1}", b"[" * 2000 + b"]" * 2000])
def test_loads_raises_parse_error_on_anything_not_json(data: bytes) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as raised:
        jsonrpc.loads(data)
    assert raised.value.code == jsonrpc.PARSE_ERROR
    assert raised.value.request_id is None
    assert str(raised.value) == "Parse error"


def test_loads_refuses_nesting_deeper_than_max_depth() -> None:
    assert jsonrpc.loads(b"[" * 200 + b"]" * 200, max_depth=200) == json_nested(199)
    assert jsonrpc.loads("[" * 200 + "]" * 200, max_depth=200) == json_nested(199)
    for data in (b"[" * 201 + b"]" * 201, "[" * 201 + "]" * 201, b'{"a":' * 201 + b"1" + b"}" * 201):
        with pytest.raises(jsonrpc.InvalidMessage) as raised:
            jsonrpc.loads(data, max_depth=200)
        assert raised.value.code == jsonrpc.PARSE_ERROR
    # many brackets side by side are not deep
    assert jsonrpc.loads(b"[" + b"[]," * 1000 + b"[]]", max_depth=2) == [[]] * 1001
    assert jsonrpc.loads(b"[" * 500 + b"]" * 500) == json_nested(499)  # no limit unless asked


def test_max_depth_leaves_room_to_send_on() -> None:
    # A node's run message puts a task's args 4 levels deeper than the request did (5 in a batch).
    value = json_nested(jsonrpc.MAX_DEPTH + 5)
    assert jsonrpc.loads(jsonrpc.dumps(value)) == value


def json_nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


def test_invalid_message_defaults_to_the_standard_message() -> None:
    assert str(jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST)) == "Invalid Request"
    assert str(jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST, "no method")) == "no method"
    assert str(jsonrpc.InvalidMessage(-1)) == "Error"


# ---- builders --------------------------------------------------------------------------------------


def test_request_always_has_an_id_member() -> None:
    assert jsonrpc.request("add", [1, 2], 7) == {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 7}
    assert jsonrpc.request("info") == {"jsonrpc": "2.0", "method": "info", "id": None}
    assert jsonrpc.request("f", {"a": 1}, "x") == {"jsonrpc": "2.0", "method": "f", "params": {"a": 1}, "id": "x"}


def test_request_with_a_null_id_is_a_call_not_a_notification() -> None:
    parsed = jsonrpc.parse_request(jsonrpc.request("info"))
    assert parsed == jsonrpc.Request("info", [], None, is_notification=False)


def test_notification_has_no_id_member() -> None:
    assert jsonrpc.notification("tick") == {"jsonrpc": "2.0", "method": "tick"}
    assert jsonrpc.notification("tick", {"n": 1}) == {"jsonrpc": "2.0", "method": "tick", "params": {"n": 1}}
    assert jsonrpc.notification("tick", []) == {"jsonrpc": "2.0", "method": "tick", "params": []}


def test_result_and_error_responses() -> None:
    assert jsonrpc.result(1, None) == {"jsonrpc": "2.0", "result": None, "id": 1}
    problem = {"code": -32000, "message": "boom"}
    assert jsonrpc.error("a", problem) == {"jsonrpc": "2.0", "error": problem, "id": "a"}


def test_error_object_uses_the_standard_message_unless_given_one() -> None:
    assert jsonrpc.error_object(jsonrpc.METHOD_NOT_FOUND) == {"code": -32601, "message": "Method not found"}
    assert jsonrpc.error_object(jsonrpc.INVALID_PARAMS, "x must be an integer") == {
        "code": -32602,
        "message": "x must be an integer",
    }
    assert jsonrpc.error_object(wire.TASK_FAILED) == {"code": -32000, "message": "Error"}
    assert jsonrpc.error_object(jsonrpc.INVALID_REQUEST, data="why") == {
        "code": -32600,
        "message": "Invalid Request",
        "data": "why",
    }
    assert jsonrpc.error_object(wire.TASK_FAILED, "boom", {"type": "ValueError"})["data"] == {"type": "ValueError"}


# ---- parse_request ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1},
            jsonrpc.Request("subtract", [42, 23], 1),
        ),
        (
            {"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42}, "id": "a"},
            jsonrpc.Request("subtract", {"minuend": 42}, "a"),
        ),
        ({"jsonrpc": "2.0", "method": "get_data", "id": 2.5}, jsonrpc.Request("get_data", [], 2.5)),
        ({"jsonrpc": "2.0", "method": "get_data", "id": None}, jsonrpc.Request("get_data", [], None)),
        ({"jsonrpc": "2.0", "method": "update", "params": [1]}, jsonrpc.Request("update", [1], None, is_notification=True)),
        ({"jsonrpc": "2.0", "method": "foobar"}, jsonrpc.Request("foobar", [], None, is_notification=True)),
    ],
)
def test_parse_request_accepts_calls_and_notifications(item: Any, expected: jsonrpc.Request) -> None:
    assert jsonrpc.parse_request(item) == expected


@pytest.mark.parametrize(
    ("item", "request_id"),
    [
        (1, None),
        ("a", None),
        (None, None),
        ([], None),
        ({"foo": "boo"}, None),
        ({"method": "add", "id": 3}, 3),
        ({"jsonrpc": "1.0", "method": "add", "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),
        ({"jsonrpc": "2.0", "method": 1, "id": "x"}, "x"),
        ({"jsonrpc": "2.0", "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": "add", "params": "bar", "id": 5}, 5),
        ({"jsonrpc": "2.0", "method": "add", "params": 5}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": {"a": 1}}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": True}, None),
        ({"jsonrpc": "2.0", "method": 1, "id": False}, None),
    ],
)
def test_parse_request_rejects_what_is_not_a_request(item: Any, request_id: jsonrpc.RequestId) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as raised:
        jsonrpc.parse_request(item)
    assert raised.value.code == jsonrpc.INVALID_REQUEST
    assert raised.value.request_id == request_id
    assert str(raised.value) == "Invalid Request"


# ---- parse_response --------------------------------------------------------------------------------


def test_parse_response_reads_results_and_errors() -> None:
    assert jsonrpc.parse_response({"jsonrpc": "2.0", "result": 19, "id": 1}) == jsonrpc.Response(1, 19)
    assert jsonrpc.parse_response({"jsonrpc": "2.0", "result": None, "id": None}) == jsonrpc.Response(None, None)
    problem = {"code": -32601, "message": "Method not found"}
    assert jsonrpc.parse_response({"jsonrpc": "2.0", "error": problem, "id": "1"}) == jsonrpc.Response("1", error=problem)


@pytest.mark.parametrize(
    "item",
    [
        None,
        [],
        {"result": 1, "id": 1},
        {"jsonrpc": "1.0", "result": 1, "id": 1},
        {"jsonrpc": "2.0", "result": 1},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "error": "boom", "id": 1},
        {"jsonrpc": "2.0", "error": {"message": "no code"}, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": "-32000", "message": "code not an integer"}, "id": 1},
    ],
)
def test_parse_response_rejects_what_is_not_a_response(item: Any) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as raised:
        jsonrpc.parse_response(item)
    assert raised.value.code == jsonrpc.INVALID_REQUEST


def test_is_response_tells_responses_from_requests() -> None:
    assert jsonrpc.is_response({"jsonrpc": "2.0", "result": 1, "id": 1})
    assert jsonrpc.is_response({"jsonrpc": "2.0", "error": {"code": 1}, "id": 1})
    assert not jsonrpc.is_response({"jsonrpc": "2.0", "method": "result", "result": 1, "id": 1})
    assert not jsonrpc.is_response({"jsonrpc": "2.0", "method": "add", "id": 1})
    assert not jsonrpc.is_response({"foo": "boo"})
    assert not jsonrpc.is_response([{"jsonrpc": "2.0", "result": 1, "id": 1}])


# ---- split_frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "envelope", "payload"),
    [
        pytest.param([b"peer", b"{}"], (b"peer",), b"{}", id="bare-dealer"),
        pytest.param([b"peer", b"", b"{}"], (b"peer", b""), b"{}", id="req"),
        pytest.param([b"peer", b"\x00\x00\x00\x01", b"", b"{}"], (b"peer", b"\x00\x00\x00\x01", b""), b"{}", id="req-correlate"),
        pytest.param([b"proxy", b"peer", b"", b"{}"], (b"proxy", b"peer", b""), b"{}", id="behind-a-proxy"),
        pytest.param([b"peer", b""], (b"peer",), b"", id="empty-payload"),
        pytest.param([b"peer", b"", b""], (b"peer", b""), b"", id="req-empty-payload"),
    ],
)
def test_split_frames_keeps_the_whole_envelope(frames: list[bytes], envelope: Envelope, payload: bytes) -> None:
    assert split_frames(frames) == (envelope, payload)


@pytest.mark.parametrize(
    ("frames", "envelope"),
    [
        pytest.param([b"peer"], (b"peer",), id="no-payload"),
        pytest.param([b"peer", b"x", b"y", b"z"], (b"peer",), id="three-frames"),
        pytest.param([b"peer", b"x", b""], (b"peer",), id="empty-last-frame"),
        pytest.param([b"peer", b"", b"a", b"b"], (b"peer", b""), id="delimiter-then-two-frames"),
    ],
)
def test_split_frames_rejects_other_shapes_with_a_reachable_envelope(frames: list[bytes], envelope: Envelope) -> None:
    assert split_frames(frames) == (envelope, None)


# ---- Reply -----------------------------------------------------------------------------------------


class Sent:
    """Stands in for the broker's send: records what would go out, and where."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Any]] = []

    def __call__(self, envelope: Envelope, message: dict[str, Any] | list[Any]) -> None:
        self.messages.append((envelope, message))


ENVELOPE = (b"peer", b"")


def test_single_reply_is_sent_at_once() -> None:
    sent = Sent()
    reply = Reply(ENVELOPE, sent, is_batch=False)
    reply.slot()(jsonrpc.result(1, 19))
    assert sent.messages == [(ENVELOPE, {"jsonrpc": "2.0", "result": 19, "id": 1})]


def test_batch_reply_waits_for_every_slot_and_the_seal() -> None:
    sent = Sent()
    reply = Reply(ENVELOPE, sent, is_batch=True)
    first, second = reply.slot(), reply.slot()
    second(jsonrpc.result(2, "b"))
    reply.seal()
    assert sent.messages == []  # the first slot is still open
    first(jsonrpc.result(1, "a"))
    assert sent.messages == [(ENVELOPE, [jsonrpc.result(2, "b"), jsonrpc.result(1, "a")])]


def test_batch_reply_filled_before_the_seal_is_sent_by_the_seal() -> None:
    sent = Sent()
    reply = Reply(ENVELOPE, sent, is_batch=True)
    reply.slot()(jsonrpc.result(1, "a"))
    assert sent.messages == []  # more requests of the batch may still take slots
    reply.seal()
    assert sent.messages == [(ENVELOPE, [jsonrpc.result(1, "a")])]


def test_batch_of_notifications_sends_nothing() -> None:
    sent = Sent()
    reply = Reply(ENVELOPE, sent, is_batch=True)
    reply.seal()
    assert sent.messages == []


def test_batch_reply_is_sent_once() -> None:
    sent = Sent()
    reply = Reply(ENVELOPE, sent, is_batch=True)
    reply.slot()(jsonrpc.result(1, "a"))
    reply.seal()
    reply.seal()
    assert len(sent.messages) == 1


# ---- Waiter ----------------------------------------------------------------------------------------


def test_waiter_answers_once_with_its_own_request_id() -> None:
    answers: list[dict[str, Any]] = []
    waiter = Waiter("req-7", answers.append)
    waiter.answer_outcome(42, None)
    waiter.answer_outcome(43, None)
    assert answers == [{"jsonrpc": "2.0", "result": 42, "id": "req-7"}]


def test_waiter_answers_a_failure_with_the_error_object() -> None:
    answers: list[dict[str, Any]] = []
    problem = jsonrpc.error_object(wire.TASK_FAILED, "ValueError: boom", {"type": "ValueError"})
    Waiter(3, answers.append).answer_outcome(None, problem)
    assert answers == [{"jsonrpc": "2.0", "error": problem, "id": 3}]


def test_waiter_answers_an_exception_with_its_code() -> None:
    answers: list[dict[str, Any]] = []
    Waiter(3, answers.append).answer_error(TaskTimeout("task t has no result yet"))
    assert answers == [{"jsonrpc": "2.0", "error": {"code": -32002, "message": "task t has no result yet"}, "id": 3}]


def test_waiter_cancels_its_timer_when_answered() -> None:
    timer = Timer(0.0, 1, lambda: None)
    Waiter(1, lambda response: None, timer=timer).answer_outcome(1, None)
    assert timer.cancelled


def test_coalesce_turns_a_message_it_cannot_encode_into_an_error_and_keeps_the_rest() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    finished = "zerotask.client.finished"
    payloads = coalesce(
        [
            {"jsonrpc": "2.0", "result": deep, "id": 7},
            {"jsonrpc": "2.0", "method": finished, "params": {"task_id": "a", "result": deep}},
            {"jsonrpc": "2.0", "method": finished, "params": {"task_id": "b", "result": 1}},
        ]
    )
    response, batch = (jsonrpc.loads(payload) for payload in payloads)
    assert response["id"] == 7 and response["error"]["code"] == -32603
    assert batch[0]["params"]["task_id"] == "a" and batch[0]["params"]["error"]["code"] == -32603
    assert batch[1]["params"] == {"task_id": "b", "result": 1}


def test_dispatcher_runs_a_call_and_turns_failures_into_error_objects() -> None:
    dispatcher = Dispatcher()
    task(name="double", dispatcher=dispatcher)(lambda value: value * 2)
    task(name="boom", dispatcher=dispatcher)(lambda: 1 / 0)
    assert dispatcher.run("double", [21], {}) == (42, None)
    assert dispatcher.run("double", [], {"value": 2}) == (4, None)
    _, missing = dispatcher.run("nope", [], {})
    _, wrong = dispatcher.run("double", [1, 2], {})
    _, failed = dispatcher.run("boom", [], {})
    assert missing is not None and missing["code"] == jsonrpc.METHOD_NOT_FOUND and "data" not in missing
    assert wrong is not None and wrong["code"] == jsonrpc.INVALID_PARAMS and "data" not in wrong
    assert failed is not None and failed["code"] == wire.TASK_FAILED
    assert failed["data"]["type"] == "ZeroDivisionError" and failed["data"]["retryable"] is False
    assert "retry_in_s" not in failed["data"]


def test_a_failure_carries_the_tasks_own_retry_decision() -> None:
    """The retry policy travels with the failure: retry_in_s while attempts remain, for the exceptions
    retry_on names, doubling from retry_backoff up to retry_backoff_max."""
    dispatcher = Dispatcher()

    @task(name="flaky", retries=3, retry_on=(ConnectionError,), retry_backoff=0.5, retry_backoff_max=1.5, dispatcher=dispatcher)
    def flaky(kind: str) -> None:
        raise ConnectionError("down") if kind == "network" else ValueError("bad")

    delays = []
    for attempt in range(4):
        _, error = dispatcher.run("flaky", ["network"], {}, attempt)
        assert error is not None and error["data"]["retryable"] is True
        delays.append(error["data"].get("retry_in_s"))
    assert delays == [0.5, 1.0, 1.5, None]
    _, other = dispatcher.run("flaky", ["value"], {}, 0)
    assert other is not None and other["data"]["retryable"] is False and "retry_in_s" not in other["data"]


def test_task_takes_time_limit_and_still_reads_the_old_timeout_with_a_warning() -> None:
    dispatcher = Dispatcher()
    task(name="limited", time_limit=2.5, dispatcher=dispatcher)(lambda: None)
    with pytest.warns(DeprecationWarning, match="time_limit"):
        task(name="old", timeout=4.0, dispatcher=dispatcher)(lambda: None)
    limited, old = dispatcher.get("limited"), dispatcher.get("old")
    assert limited is not None and limited.options.time_limit_s == 2.5
    assert old is not None and old.options.time_limit_s == 4.0


@pytest.mark.parametrize("options", [{"retries": -1}, {"time_limit": 0}, {"time_limit": float("nan")}, {"retry_backoff": -1.0}])
def test_task_refuses_options_no_task_could_use(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        task(name="bad", dispatcher=Dispatcher(), **options)(lambda: None)
