"""The broker against hostile peers: a CI-sized slice of ``python -m bench.fuzz``, a hypothesis search over
JSON-RPC shapes, and one minimal reproduction for each problem the fuzzer found.

Every test runs a real broker (and, where tasks must run, a real node) and raw ZeroMQ sockets; every wait is
bounded and scaled (ZEROTASK_TEST_TIMEOUT_SCALE). Memory is the broker process's, read from /proc.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench import fuzz
from zerotask import wire
from zerotask.client import Client
from zerotask.testing import Cluster, scaled

Context = zmq.Context[zmq.Socket[bytes]]

# The CI slice: the generator and the checks of `python -m bench.fuzz`, with a fixed seed.
SLICE = fuzz.Options(messages=20_000, seed=20261129, store="memory", peers=8, workers=1, queued=200)
# RSS growth allowed over 20,000 hostile messages, measured when the flood ends. What such a flood may
# legitimately leave: each message stores at most one task (~1 KB with its arguments in the memory store: ~20 MB
# at most), a waiting caller (~0.3 KB) and a reply for a peer that does not read; the allocator keeps some of
# what the few 16 MiB messages of the slice freed. That is under 100 MB; 200 MB is twice that, and far below what
# a leak or an amplified reply costs (hundreds of MB to GBs: see the reproductions below).
RSS_BOUND_MIB = 200.0
# The peak may also hold one message of the largest size the broker accepts, parsed: 16 MiB of JSON becomes up
# to ~15 times as much in Python objects (measured: a 16 MiB array of short strings raises the peak 160-230 MB).
PEAK_BOUND_MIB = RSS_BOUND_MIB + 256.0
MIB = 1024 * 1024


@pytest.fixture
def zmq_context() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(context: Context, endpoint: str, routing_id: bytes | None = None, reads: bool = True) -> zmq.Socket[bytes]:
    """A bare DEALER that never takes a message over the broker's own limit (it drops the connection instead);
    one that does not read takes in one message at most."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 16 * MIB)
    if not reads:
        sock.setsockopt(zmq.RCVHWM, 1)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    return sock


def rpc(method: str, params: Any = None, request_id: Any = None, notification: bool = False) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if not notification:
        message["id"] = request_id
    return orjson.dumps(message)


def receive(sock: zmq.Socket[bytes], timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The objects of the next message (a batch gives several); fails if none comes in ``timeout_s`` (scaled)."""
    if not sock.poll(int(scaled(timeout_s) * 1000)):
        raise AssertionError(f"nothing from the broker within {scaled(timeout_s):.1f} s")
    message = orjson.loads(sock.recv_multipart()[-1])
    return message if isinstance(message, list) else [message]


def response(sock: zmq.Socket[bytes], request_id: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """The response with ``request_id``, skipping notifications and other responses."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        for item in receive(sock, max(0.01, deadline - time.monotonic())):
            if "method" not in item and item.get("id") == request_id:
                return item


def ask(sock: zmq.Socket[bytes], message: bytes, request_id: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    sock.send(message)
    return response(sock, request_id, timeout_s)


def ping_s(context: Context, endpoint: str, timeout_s: float = 60.0) -> float:
    """Seconds until a fresh peer's ping is answered."""
    sock = dealer(context, endpoint)
    try:
        start = time.monotonic()
        assert "result" in ask(sock, rpc(wire.PING, None, "ping"), "ping", timeout_s)
        return time.monotonic() - start
    finally:
        sock.close(linger=0)


def connect_node(context: Context, endpoint: str, routing_id: bytes, methods: list[str], credit: int = 0) -> zmq.Socket[bytes]:
    """A raw peer registered as a node for ``methods``."""
    node = dealer(context, endpoint, routing_id)
    params = {"node": routing_id.decode(), "methods": methods, "credit": credit}
    assert "result" in ask(node, rpc(wire.CONNECT, params, "connect"), "connect")
    return node


# ---- the flood --------------------------------------------------------------------------------------------


def test_broker_stays_up_bounded_and_serving_under_a_fuzzing_flood(tmp_path: Path) -> None:
    report = fuzz.run(dataclasses.replace(SLICE, directory=tmp_path))
    print(fuzz.summary(report))
    growth = report.rss_mib["end (peers connected)"] - report.rss_mib["start"]
    peak_growth = report.rss_mib["peak (VmHWM)"] - report.rss_mib["start"]
    print(f"RSS growth {growth:.0f} MiB (bound {RSS_BOUND_MIB:.0f}), peak {peak_growth:.0f} MiB (bound {PEAK_BOUND_MIB:.0f})")
    assert report.broker_alive, report.errors
    assert report.node_alive, report.errors
    assert report.final_call == "ok", report.errors
    assert not report.failed_calls, report.errors
    assert report.queued_right == report.queued_total == SLICE.queued, report.errors
    assert growth < RSS_BOUND_MIB, fuzz.summary(report)
    assert peak_growth < PEAK_BOUND_MIB, fuzz.summary(report)


# ---- a hypothesis search over JSON-RPC shapes ---------------------------------------------------------------

PARAM_NAMES = (
    *("method", "args", "kwargs", "task_id", "notify", "time_limit_s", "wait", "timeout_s", "task_ids"),
    *("node", "methods", "workers", "credit", "running", "tasks", "draining"),
)
NAMES = (*fuzz.CONTROL, "add", "fuzz.a", "zerotask.broker.nope", "zerotask.", "")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
task_ids = st.sampled_from(("fz-1", "hyp-task", "x" * 128, "x" * 129)) | values
params = (
    st.dictionaries(st.sampled_from(PARAM_NAMES), task_ids, max_size=6)
    | st.lists(task_ids, max_size=6)
    | st.lists(st.lists(task_ids, max_size=3), max_size=3)
    | values
)
ids = st.none() | st.integers() | st.text(max_size=8) | st.booleans() | st.lists(scalars, max_size=2)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | scalars, "method": st.sampled_from(NAMES) | scalars}, optional={"params": params, "id": ids}
)
messages = requests | st.lists(requests, max_size=4) | scalars


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Context]]:
    """One broker and node for every example; each example talks over a socket of its own."""
    context: Context = zmq.Context()
    with Cluster(store="memory", directory=tmp_path_factory.mktemp("hypothesis")) as cluster:
        cluster.start_broker()
        cluster.start_node("bench.tasks", workers=1)
        yield cluster, context
    context.destroy(linger=0)


def answered_at_once(message: Any) -> bool:
    """Whether the broker answers ``message`` in the round it reads it: anything but a batch, a response, a
    notification, a task called by name, and the two methods that wait for a task (call, result)."""
    if not isinstance(message, dict):
        return not isinstance(message, list)
    method = message.get("method")
    waits = isinstance(method, str) and (not method.startswith(wire.CONTROL_PREFIX) or method in (wire.CALL, wire.RESULT))
    return "id" in message and not waits


@seed(20261129)
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages)
def test_every_reply_is_json_rpc_and_no_message_causes_an_internal_error(searched: tuple[Cluster, Context], message: Any) -> None:
    cluster, context = searched
    sock = dealer(context, cluster.endpoint)
    try:
        sock.send(orjson.dumps(message))
        sock.send(rpc(wire.PING, None, "chaser"))
        before_chaser: list[dict[str, Any]] = []
        deadline = time.monotonic() + scaled(10)
        while True:  # the ping is answered, so the broker is alive and still reads this peer
            items = receive(sock, max(0.01, deadline - time.monotonic()))
            if any(item.get("id") == "chaser" and "method" not in item for item in items):
                break
            before_chaser.extend(items)
    finally:
        sock.close(linger=0)
    for item in before_chaser:
        assert item.get("jsonrpc") == "2.0", item
        if "method" in item:
            continue  # a notification (a peer that called itself a node is told to reconnect, say)
        assert "id" in item and ("result" in item) != ("error" in item), item
        if "error" in item:
            assert type(item["error"].get("code")) is int and isinstance(item["error"].get("message"), str), item
            assert item["error"]["code"] != -32603, f"Internal error for {message!r}: {item}"
    if answered_at_once(message):
        assert before_chaser, f"no answer to {message!r}"


# ---- minimal reproductions of what the fuzzer found ----------------------------------------------------------


def test_info_still_answers_after_a_node_grants_credit_beyond_64_bits(cluster: Cluster, zmq_context: Context) -> None:
    """A node that grants 2^64-1 credit, then 1 more: its credit no longer fits a 64-bit JSON integer, and
    zerotask.broker.info answered every client -32603 Internal error for as long as that node stayed."""
    cluster.start_broker()
    liar = connect_node(zmq_context, cluster.endpoint, b"liar", ["fuzz.a"], credit=2**64 - 1)
    liar.send(rpc(wire.REQUEST, {"credit": 1}, notification=True))
    with Client(cluster.endpoint, timeout=scaled(10)) as client:
        info = client.info()
    assert [node["name"] for node in info["nodes"]] == ["liar"]


@pytest.mark.parametrize(
    "reported",
    [{"code": "x", "message": "m"}, {"code": 1.5, "message": "m"}, {"message": "no code"}, {"code": -32000}, {"\n": {}}],
    ids=["string-code", "fraction-code", "no-code", "no-message", "neither"],
)
def test_callers_get_only_valid_error_objects_whatever_a_node_reports(
    cluster: Cluster, zmq_context: Context, reported: dict[str, Any]
) -> None:
    """JSON-RPC 2.0, 5.1: an error has an integer code and a string message. The broker relayed a node's
    error object as it came, so a caller got {"code": "x"} (the zerotask Client raised ProtocolError, not
    TaskError)."""
    cluster.start_broker()
    liar = connect_node(zmq_context, cluster.endpoint, b"liar", ["fuzz.a"], credit=1)
    caller = dealer(zmq_context, cluster.endpoint)
    caller.send(rpc("fuzz.a", [], "call"))
    tasks: list[dict[str, Any]] = []
    while not tasks:
        tasks = [task for item in receive(liar) if item.get("method") == wire.NODE_RUN for task in item["params"]["tasks"]]
    outcome = {"task_id": tasks[0]["task_id"], "error": reported}
    liar.send(rpc(wire.FINISHED_TASKS, {"tasks": [outcome]}, notification=True))
    error = response(caller, "call")["error"]
    assert type(error.get("code")) is int and isinstance(error.get("message"), str), error


def test_the_broker_forgets_the_task_names_of_nodes_that_left(cluster: Cluster, zmq_context: Context) -> None:
    """A node's names stayed in the broker's count of who serves what after the node was gone (the count went
    to zero; the name stayed). 20 connects with 10,000 new 500-byte names each (5 MB a message) left ~170 MB
    for good. Bound: one node's names at a time, ~10 MB in Python, with slack: 64 MB."""
    cluster.start_broker()
    assert cluster.broker is not None
    before = fuzz.rss_mib(cluster.broker.pid)
    liar = dealer(zmq_context, cluster.endpoint, b"liar")
    for round_ in range(20):
        names = [f"gone.{round_}.{i}.{'n' * 480}" for i in range(10_000)]
        assert "result" in ask(liar, rpc(wire.CONNECT, {"node": "liar", "methods": names}, round_), round_)
    liar.send(rpc(wire.DISCONNECT, {}, notification=True))
    ping_s(zmq_context, cluster.endpoint)
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"RSS growth after 20 nodes of 10,000 names came and went: {growth:.0f} MiB")
    assert growth < 64


def test_the_broker_gives_back_what_parsing_large_messages_took(cluster: Cluster, zmq_context: Context) -> None:
    """Six 12 MB requests of a million short strings each: parsed, answered, freed. glibc kept about 34 MiB
    of what they freed, counted in the broker's RSS for ever after; trimmed after each round that read such a
    message, about 12 MiB stays (this is what the fuzzing flood's RSS bound kept hitting)."""
    cluster.start_broker()
    assert cluster.broker is not None
    sock = dealer(zmq_context, cluster.endpoint)
    assert "result" in ask(sock, rpc(wire.PING, None, "warm"), "warm")
    before = fuzz.rss_mib(cluster.broker.pid)
    for n in range(6):
        strings = [f"s{i}" for i in range(1_200_000)]
        assert "result" in ask(sock, rpc(wire.PING, {"x": strings}, n), n, timeout_s=scaled(30))  # (ping reads no params)
    time.sleep(0.3)
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"RSS growth after six 12 MB messages: {growth:.0f} MiB")
    assert growth < 24


@pytest.mark.parametrize("shape", ["result", "info"])
def test_a_small_batch_cannot_make_the_broker_build_a_huge_reply(cluster: Cluster, zmq_context: Context, shape: str) -> None:
    """Each element of a batch is answered in full, and nothing bounds the reply: 400 zerotask.broker.result
    requests (30 KB) for a task whose result is 1 MB, or 400 zerotask.broker.info (25 KB) while a node serving
    10,000 100-byte names is connected, made the broker build and queue a 400 MB reply (x13,000; with 1,000
    requests and a 15 MB value, 15 GB). Bound on the broker's peak RSS growth: 200 MB."""
    cluster.start_broker()
    assert cluster.broker is not None
    if shape == "result":
        cluster.start_node("bench.tasks", workers=1)
        with Client(cluster.endpoint, timeout=scaled(30)) as client:
            task_id = client.submit("add", [1] * 250_000, [1] * 250_000)
            assert len(client.result(task_id)) == 500_000  # 1 MB of JSON
        batch = [{"jsonrpc": "2.0", "method": wire.RESULT, "params": [task_id], "id": i} for i in range(400)]
    else:
        names = [f"{i:05d}.{'n' * 94}" for i in range(10_000)]
        fat = connect_node(zmq_context, cluster.endpoint, b"fat", names)
        fat.send(rpc(wire.HEARTBEAT, {}, notification=True))
        batch = [{"jsonrpc": "2.0", "method": wire.INFO, "id": i} for i in range(400)]
    time.sleep(0.2)
    before = fuzz.rss_mib(cluster.broker.pid, "VmHWM")
    asker = dealer(zmq_context, cluster.endpoint, reads=False)  # the reply is not read here
    asker.send(orjson.dumps(batch))
    time.sleep(0.05)
    ping_s(zmq_context, cluster.endpoint)  # sent after the batch, answered once the batch's round is over
    growth = fuzz.rss_mib(cluster.broker.pid, "VmHWM") - before
    print(f"{shape}: a {len(orjson.dumps(batch)):,}-byte batch raised the broker's peak RSS by {growth:.0f} MiB")
    assert cluster.broker.alive()
    assert growth < 200


def test_replies_a_peer_does_not_read_cannot_pile_up_in_the_broker(cluster: Cluster, zmq_context: Context) -> None:
    """The broker queues at most 1,000 messages for a peer (REPLY_HWM), whatever their size: a peer that sends
    400 single zerotask.broker.info requests (25 KB in all) while a node serving 10,000 100-byte names is
    connected, and never reads, had 400 MB of replies held for it (the broker's RSS grew ~800 MB) until it went
    away; with 15 MB answers, up to 15 GB. This is what the fuzzing flood's "deaf" peers hit. Bound on RSS growth: 200 MB."""
    cluster.start_broker()
    assert cluster.broker is not None
    names = [f"{i:05d}.{'n' * 94}" for i in range(10_000)]
    fat = connect_node(zmq_context, cluster.endpoint, b"fat", names)
    fat.send(rpc(wire.HEARTBEAT, {}, notification=True))
    time.sleep(0.2)
    before = fuzz.rss_mib(cluster.broker.pid)
    deaf = dealer(zmq_context, cluster.endpoint, reads=False)
    for i in range(400):
        deaf.send(rpc(wire.INFO, None, i))
    time.sleep(0.05)
    ping_s(zmq_context, cluster.endpoint)
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"RSS growth with 400 info replies unread: {growth:.0f} MiB")
    assert cluster.broker.alive()
    assert growth < 200


def test_a_peer_sending_faster_than_the_broker_parses_is_pushed_back(cluster: Cluster, zmq_context: Context) -> None:
    """ZeroMQ buffered without bound what a peer sent before the broker read it (RCVHWM 0): 400 notifications of
    2 MB of JSON, sent as fast as loopback goes, all sat in the broker (~860 MiB) while it parsed them one round
    at a time. At most REQUEST_HWM (100) now wait per peer, and TCP pushes back on the sender. Bound on the peak
    RSS growth: 450 MiB (100 of them waiting, one parsed, the allocator's slack)."""
    cluster.start_broker()
    assert cluster.broker is not None
    before = fuzz.rss_mib(cluster.broker.pid, "VmHWM")
    flooder = zmq_context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)  # its own queue unbounded: the push back is the broker's
    flooder.connect(cluster.endpoint)
    payload = rpc(wire.HEARTBEAT, {"junk": [[0] * 8] * 120_000}, notification=True)  # ~2 MB, slow to parse
    for _ in range(400):
        flooder.send(payload, copy=False)
    time.sleep(scaled(3))
    growth = fuzz.rss_mib(cluster.broker.pid, "VmHWM") - before
    print(f"RSS peak growth while a peer pushed 400 messages of {len(payload) / MIB:.1f} MiB: {growth:.0f} MiB")
    assert ping_s(zmq_context, cluster.endpoint) < scaled(10)  # and the others are still served meanwhile
    assert cluster.broker.alive()
    assert growth < 450


def test_queued_tasks_cannot_take_the_memory_store_past_a_bound_in_bytes(cluster: Cluster, zmq_context: Context) -> None:
    """The queue is bounded in tasks (10,000,000; the memory store holds 2,000,000), not in bytes, and a task's
    arguments stay as parsed Python objects: 20 tasks of 4 MB of JSON (an array of 800,000 two-letter strings)
    waiting for a node took ~1.1 GB, 14 times their size; 16 MiB messages make it ~230 MB a task. Bound: 400 MB
    for these 80 MB of JSON (5 times their size); refusing some of them (QueueFull) is fine."""
    cluster.start_broker()
    assert cluster.broker is not None
    keeper = connect_node(zmq_context, cluster.endpoint, b"keeper", ["fuzz.never"])  # so the name is served
    submitter = dealer(zmq_context, cluster.endpoint)
    before = fuzz.rss_mib(cluster.broker.pid)
    message = rpc(wire.SUBMIT, {"method": "fuzz.never", "args": [["ab"] * 800_000]}, "s")
    answers = []
    for _ in range(20):
        answers.append(ask(submitter, message, "s", timeout_s=30))
        keeper.send(rpc(wire.HEARTBEAT, {}, notification=True))
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    accepted = sum(1 for answer in answers if "result" in answer)
    print(f"{accepted} of 20 tasks of {len(message):,} bytes accepted; RSS growth {growth:.0f} MiB")
    assert growth < 400


def test_the_waits_of_peers_that_went_away_do_not_pile_up(cluster: Cluster, zmq_context: Context) -> None:
    """A task that never ends (its name is served only by a node that takes nothing). 40 peers each ask 10,000
    times for its result and go away: the broker kept every wait for ever (max_waiting bounds one routing id;
    a new socket is a new one), ~120 MB. Bound: 64 MB, about twice one peer's allowance (100,000 waits)."""
    cluster.start_broker()
    assert cluster.broker is not None
    keeper = connect_node(zmq_context, cluster.endpoint, b"keeper", ["fuzz.never"])
    asker = dealer(zmq_context, cluster.endpoint)
    params = {"method": "fuzz.never", "task_id": "never"}
    assert ask(asker, rpc(wire.SUBMIT, params, "submit"), "submit")["result"] == "never"
    before = fuzz.rss_mib(cluster.broker.pid)
    batch = orjson.dumps([{"jsonrpc": "2.0", "method": wire.RESULT, "params": ["never"], "id": i} for i in range(1000)])
    for _ in range(40):
        gone = dealer(zmq_context, cluster.endpoint)
        for _ in range(10):
            gone.send(batch)
        keeper.send(rpc(wire.HEARTBEAT, {}, notification=True))
        ping_s(zmq_context, cluster.endpoint)
        gone.close(linger=0)
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"RSS growth after 400,000 waits from 40 peers that went away: {growth:.0f} MiB")
    assert growth < 64


@pytest.mark.parametrize("shape", ["connect-running", "notify-batch"])
def test_one_message_cannot_hold_up_the_sqlite_broker(sqlite_cluster: Cluster, zmq_context: Context, shape: str) -> None:
    """With the SQLite store every task id in a message costs SQL statements, and what one message may carry
    is bounded only by its size: a connect whose running list holds 200,000 copies of a queued task's id
    (1 MB) held the broker's loop ~3 s (a 15 MB one, 48 s); a batch of 60 notify of 10,000 ids each (5 MB)
    ~1.7 s. Every client and node waited. Bound: a ping sent meanwhile is answered within half a heartbeat."""
    cluster = sqlite_cluster
    cluster.start_broker()
    keeper = connect_node(zmq_context, cluster.endpoint, b"keeper", ["fuzz.never"])
    sender = dealer(zmq_context, cluster.endpoint, b"sender")
    assert ask(sender, rpc(wire.SUBMIT, {"method": "fuzz.never", "task_id": "t1"}, "s"), "s")["result"] == "t1"
    if shape == "connect-running":
        message = rpc(wire.CONNECT, {"node": "sender", "methods": ["fuzz.never"], "running": ["t1"] * 200_000}, "c")
    else:
        ids = [f"u{i}" for i in range(10_000)]
        message = orjson.dumps([{"jsonrpc": "2.0", "method": wire.NOTIFY, "params": [ids], "id": i} for i in range(60)])
    keeper.send(rpc(wire.HEARTBEAT, {}, notification=True))
    sender.send(message)
    time.sleep(0.02)
    waited_s = ping_s(zmq_context, cluster.endpoint)
    print(f"{shape}: a {len(message):,}-byte message; a ping sent 20 ms later waited {waited_s:.2f} s")
    assert waited_s < scaled(0.5)
