"""Hostile nodes against the node features that came last: report_progress (docs/protocol.md, 6.8) and the
``queues`` and ``defaults`` of zerotask.broker.connect (6.1).

An attacker here is a raw DEALER that says it is a node: it reports progress for tasks it does not hold,
floods reports of absurd values, and connects again and again with absurd or fat queues and defaults. Every
test runs a real broker process; a real node and a well-behaved client keep calling a task meanwhile, and the
test checks they are served within a generous bound (the machine is shared: the bounds are seconds, where a
healthy round trip takes milliseconds), that the node is not declared lost, and that the broker's RSS (from
/proc) stays bounded. Helpers come from tests/test_fuzz.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
import zmq

from bench import fuzz
from tests.test_fuzz import MIB, Context, ask, connect_node, dealer, ping_s, receive, rpc
from tests.test_fuzz import zmq_context as zmq_context
from zerotask import wire
from zerotask.client import Client
from zerotask.testing import Cluster, scaled, wait_until

# A healthy call takes milliseconds; a broker stalled past its heartbeat (1 s) would start declaring nodes
# lost after 3 s. Five seconds (scaled) tells "a busy shared machine" from "a broker the attacker stalled".
PROBE_BOUND_S = 5.0


class Prober(threading.Thread):
    """A well-behaved client calling ``add`` on a real node, over and over, while the test attacks; it keeps
    the slowest call's latency, and the first error."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self._endpoint = endpoint
        self._done = threading.Event()
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self._endpoint, timeout=scaled(30)) as client:
                while not self._done.is_set():
                    start = time.monotonic()
                    assert client.call("add", 2, 3) == 5
                    self.latencies.append(time.monotonic() - start)
                    self._done.wait(0.05)
        except BaseException as error:  # reported by finish(), in the test's thread
            self.error = error

    def finish(self) -> float:
        """Stop; the slowest call, in seconds. Fails if a call failed or none was made."""
        self._done.set()
        self.join(scaled(60))
        assert self.error is None, repr(self.error)
        assert self.latencies, "the prober made no call"
        return max(self.latencies)


def healthy(cluster: Cluster, context: Context) -> Prober:
    """Start a real node serving tests.tasks and a prober calling it."""
    cluster.start_node("tests.tasks", workers=1)
    prober = Prober(cluster.endpoint)
    prober.start()
    wait_until(lambda: prober.latencies, 30, "a first call through the healthy node")
    return prober


def check_healthy(cluster: Cluster, prober: Prober, what: str) -> None:
    slowest = prober.finish()
    assert cluster.broker is not None and cluster.broker.alive(), cluster.broker and cluster.broker.output()
    print(f"{what}: {len(prober.latencies)} calls by a healthy client, slowest {slowest * 1000:.0f} ms")
    assert slowest < scaled(PROBE_BOUND_S)
    raw = ("'attacker'", "'honest'", "'sink'", "'liar'")  # raw nodes never heartbeat: their loss is expected
    lost = [line for line in cluster.broker.output().splitlines() if " lost (" in line and not any(n in line for n in raw)]
    assert not lost, lost


def tasks_sent(sock: zmq.Socket[bytes], wanted: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """The tasks the broker hands this raw node, until ``wanted`` came."""
    tasks: list[dict[str, Any]] = []
    deadline = time.monotonic() + scaled(timeout_s)
    while len(tasks) < wanted:
        for item in receive(sock, max(0.01, deadline - time.monotonic())):
            if item.get("method") == wire.NODE_RUN:
                tasks.extend(item["params"]["tasks"])
    return tasks


def cpu_s(pid: int) -> float:
    """User and system CPU seconds the process has used (/proc/PID/stat, in clock ticks of 1/100 s)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


# ---- report_progress ---------------------------------------------------------------------------------------

HELD = 200
# RSS growth allowed after the progress flood (~40 MB of reports, 700,000 of them). Parsing it peaks at ~150 MB
# of Python objects, and what the allocator and ZeroMQ keep of that is not given back: the same bytes sent as
# heartbeats (whose params are ignored) left 80-135 MiB over one to two rounds, then nothing more. What the
# reports themselves may leave: one per held task (200), at most 4 KiB each: under 1 MB. Keeping the reports of
# the 300,000 ids the node does not hold would add ~100 MB, keeping every report GBs. Bound: 200 MiB.
PROGRESS_RSS_BOUND_MIB = 200.0


def report(task_id: Any, done: Any = 1, total: Any = None, info: Any = None) -> dict[str, Any]:
    return {"task_id": task_id, "done": done, "total": total, "info": info}


def absurd_reports(held: list[str], others: list[str]) -> list[dict[str, Any]]:
    """One message's worth of reports no broker should keep, then valid ones for each held task."""
    nested: Any = "bottom"
    for _ in range(150):  # deep, but under the nesting limit (208): parsed, then refused for what it is
        nested = {"n": nested}
    junk: list[Any] = [
        report(held[0], "NaN"),
        report(held[0], "Infinity"),
        report(held[0], 1, "1e309"),
        report(held[0], True),
        report(held[0], [1]),
        report(held[0], {"done": 1}),
        report(held[0], 1, info="x" * 5000),
        report(held[0], 1, info=[[]] * 2000),
        report(7, 1),
        [held[0], 1],
        "report",
        None,
    ]
    numbers = [1e308, -1e308, -5, 0, 2**63, -(2**63), 5e-324]  # absurd but finite: a node's word, kept
    odd = [report(task_id, numbers[i % len(numbers)], numbers[-i % len(numbers)], nested) for i, task_id in enumerate(held)]
    foreign = [report(task_id, 1, 2) for task_id in others]
    unknown = [report(f"unknown-{i}", i, i + 1, {"i": i}) for i in range(100_000)]
    return junk * 200 + odd + foreign + unknown


def attack_with_progress(cluster: Cluster, context: Context) -> tuple[zmq.Socket[bytes], list[str], list[str], Client]:
    """A broker, a healthy node, an attacker holding HELD tasks, an honest raw node holding one; returns the
    attacker, the ids it holds, the ids it does not (the honest node's, and one queued), and a client."""
    cluster.start_broker()
    attacker = connect_node(context, cluster.endpoint, b"attacker", ["hostile.held"], credit=HELD)
    honest = connect_node(context, cluster.endpoint, b"honest", ["hostile.other"], credit=1)
    client = Client(cluster.endpoint, timeout=scaled(30))
    for _ in range(HELD + 1):  # the last one stays queued: the attacker's credit is spent
        client.submit("hostile.held")
    other = client.submit("hostile.other")
    held = [task["task_id"] for task in tasks_sent(attacker, HELD)]
    assert [task["task_id"] for task in tasks_sent(honest, 1)] == [other]
    queued = [task["task_id"] for task in client.rpc(wire.TASKS, {"state": "QUEUED"})]
    assert len(queued) == 1
    return attacker, held, [other, *queued], client


def test_a_progress_flood_is_checked_and_bounded(cluster: Cluster, zmq_context: Context) -> None:
    attacker, held, others, client = attack_with_progress(cluster, zmq_context)
    assert cluster.broker is not None
    prober = healthy(cluster, zmq_context)
    time.sleep(0.2)
    before = fuzz.rss_mib(cluster.broker.pid)
    flood = rpc(wire.REPORT_PROGRESS, {"tasks": absurd_reports(held, others)}, notification=True)  # ~10 MB
    for round_ in range(3):
        attacker.send(flood)
        many = [report(held[(round_ + i) % HELD], i, 10_000, [[]] * 1300) for i in range(400)]  # 3.9 KiB infos
        for _ in range(300):  # and many small messages of valid reports with the heaviest info there is
            attacker.send(rpc(wire.REPORT_PROGRESS, [many[:10]], notification=True))
            many = many[10:] + many[:10]
    deep = b"[" * 1000 + b"]" * 1000  # past the nesting limit: the whole message is refused
    deep_message = b'{"jsonrpc":"2.0","method":"zerotask.broker.report_progress","params":[' + deep + b'],"id":1}'
    assert ask(attacker, deep_message, None)["error"]["code"] == -32700
    ping_s(zmq_context, cluster.endpoint)  # answered once the flood is read
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"{3 * len(flood):,} bytes of reports: RSS growth {growth:.1f} MiB (bound {PROGRESS_RSS_BOUND_MIB:.0f})")
    check_healthy(cluster, prober, "progress flood")
    with client:
        for task_id in others:  # the honest node's task, and one queued: not the attacker's to report on
            assert client.progress(task_id) is None
        with pytest.raises(Exception, match="nknown"):  # the ids it made up are not tasks
            client.progress("unknown-7")
        latest = client.progress(held[0])
        assert latest is not None and latest["total"] == 10_000 and len(orjson.dumps(latest["info"])) <= 4096
    assert growth < PROGRESS_RSS_BOUND_MIB


def test_a_burst_of_big_progress_messages_cannot_stall_the_loop(cluster: Cluster, zmq_context: Context) -> None:
    attacker, held, others, client = attack_with_progress(cluster, zmq_context)
    client.close()
    prober = healthy(cluster, zmq_context)
    flood = rpc(wire.REPORT_PROGRESS, {"tasks": absurd_reports(held, others)}, notification=True)
    for _ in range(30):
        attacker.send(flood)
    ping_s(zmq_context, cluster.endpoint)
    check_healthy(cluster, prober, "30 big progress messages")


# ---- connect's queues and defaults ------------------------------------------------------------------------


def connect(sock: zmq.Socket[bytes], name: str, **params: Any) -> dict[str, Any]:
    """The answer to a connect of ``sock`` as node ``name``, serving ``hostile.q`` unless ``methods`` says."""
    return ask(sock, rpc(wire.CONNECT, {"node": name, "methods": ["hostile.q"], **params}, name), name, timeout_s=30)


def test_a_connect_with_absurd_queues_or_defaults_is_refused_and_changes_nothing(cluster: Cluster, zmq_context: Context) -> None:
    cluster.start_broker()
    liar = dealer(zmq_context, cluster.endpoint, b"liar")
    assert "result" in connect(liar, "liar-first")
    absurd: list[dict[str, Any]] = [
        {"queues": [f"q{i}" for i in range(10_000)]},
        {"queues": ["a b"]},
        {"queues": [1]},
        {"queues": [["default"]]},
        {"queues": ["q" * MIB]},
        {"queues": []},
        {"queues": "default"},
        {"defaults": "junk"},
        {"defaults": [{"hostile.q": {"queue": "x"}}]},
    ]
    for params in absurd:
        error = connect(liar, "liar-refused", **params).get("error")
        assert error is not None and error["code"] == -32602 and error["message"], (str(params)[:80], error)
    with cluster.client() as client:  # each refused connect changed nothing: the first registration stands
        assert [node["name"] for node in client.info()["nodes"]] == ["liar-first"]


JUNK_OPTIONS: list[Any] = [
    *({"every": every} for every in (0, -1, 0.0999, 1e300, 1e308, "1", True, [1], {"s": 1})),
    *({"cron": cron} for cron in ("not cron", "0 0 30 2 *", "0 0 31 4 *", "* * * * * *", "* " * 200, 7, "")),
    {"every": 1, "cron": "* * * * *"},
    *({"unique_for": value} for value in (1e300, -1, 0, "60", True)),
    *({"rate_limit": rate} for rate in ("1e309/s", "-5/s", "0/s", "0." + "0" * 29 + "1/s", "9" * 40, "5/y", 5, None)),
    *({"priority": priority} for priority in (10, -1, "1", 1.5)),
    *({"queue": queue} for queue in ("a b", "", "q" * 65, 1)),
    "not an object",
    None,
    [],
]


def queued(client: Client, prefix: str) -> int:
    return sum(count for name, count in client.info()["queued"].items() if name.startswith(prefix))


def test_junk_defaults_are_ignored_and_cannot_break_the_schedules_of_others(cluster: Cluster, zmq_context: Context) -> None:
    """100,000 names of junk options: ignored (6.1), and a periodic task another node announced keeps its pace."""
    cluster.start_broker()
    assert cluster.broker is not None
    prober = healthy(cluster, zmq_context)
    sink = dealer(zmq_context, cluster.endpoint, b"sink")
    assert "result" in connect(sink, "sink", methods=["hostile.tick"], credit=10_000, defaults={"hostile.tick": {"every": 0.2}})
    liar = dealer(zmq_context, cluster.endpoint, b"liar")
    defaults = {f"junk.{i}": JUNK_OPTIONS[i % len(JUNK_OPTIONS)] for i in range(100_000)}
    started = cpu_s(cluster.broker.pid)
    assert "result" in connect(liar, "liar", defaults=defaults)
    assert "result" in connect(liar, "liar", defaults={"junk.alone": {"every": 1e300}})  # the only schedule it has
    ticks_before = len(tasks_sent(sink, 1))
    time.sleep(2.0)
    sink.send(rpc(wire.HEARTBEAT, {}, notification=True))
    ping_s(zmq_context, cluster.endpoint)
    ticks = ticks_before + len(tasks_sent(sink, 4, timeout_s=5))
    print(f"100,000 junk defaults: broker CPU {cpu_s(cluster.broker.pid) - started:.2f} s, {ticks} ticks of a 0.2 s schedule")
    check_healthy(cluster, prober, "junk defaults")
    with cluster.client() as client:
        assert queued(client, "junk.") == 0  # no junk schedule submitted anything
        client.rpc(wire.SUBMIT, {"method": "hostile.q", "priority": 0})  # and the broker still queues tasks
        assert queued(client, "hostile.q") == 1


def test_periodic_schedules_cannot_make_the_broker_spin_or_flood_itself(cluster: Cluster, zmq_context: Context) -> None:
    """1,000 names (the most the broker keeps), each with its own period just over the 0.1 s minimum, so that
    each falls due at another instant: every slot made the broker look at all 1,000 schedules, and together they
    asked for ~10,000 tasks a second. Bound: the broker submits at most MAX_SLOTS_PER_S (100) a second in all,
    after one catch-up each, and a healthy client keeps being served."""
    cluster.start_broker()
    assert cluster.broker is not None
    prober = healthy(cluster, zmq_context)
    liar = dealer(zmq_context, cluster.endpoint, b"liar")
    defaults = {f"spin.{i}": {"every": 0.1 + i * 1e-4} for i in range(1_000)}
    defaults |= {f"spin.cron.{i}": {"cron": f"{i % 60} * * * *"} for i in range(1_000)}
    with cluster.client() as client:
        assert "result" in connect(liar, "liar", methods=list(defaults), defaults=defaults)  # served: queued
        first = queued(client, "spin.")
        started_cpu, started = cpu_s(cluster.broker.pid), time.monotonic()
        time.sleep(3.0)
        liar.send(rpc(wire.HEARTBEAT, {}, notification=True))
        submitted = queued(client, "spin.") - first
        elapsed, cpu = time.monotonic() - started, cpu_s(cluster.broker.pid) - started_cpu
    print(f"periodic: {first} catch-up tasks, then {submitted} in {elapsed:.1f} s; broker CPU {cpu:.2f} s")
    check_healthy(cluster, prober, "1,000 periodic schedules")
    assert first <= 1_000
    assert submitted <= 100 * (elapsed + 1)


def test_a_node_reconnecting_with_fat_defaults_and_queues_does_not_grow_the_broker(
    cluster: Cluster, zmq_context: Context
) -> None:
    """2,000 connects of one routing id, each with 100 new queues and 20 new 2 KiB task names in its defaults
    (a rate limit, a uniqueness, a yearly cron each), then 30 with four 1 MiB names. What the broker may keep:
    10,000 names of defaults and of rate limits and 1,000 schedules (MAX_DEFAULTS, MAX_LIMITS, MAX_SCHEDULES),
    at most 1 KiB a name (longer ones are ignored): ~25 MB with Python's overhead. Bound: 64 MiB; keeping the
    names of every connect would be ~90 MB for the first part and 120 MB for the second."""
    cluster.start_broker()
    assert cluster.broker is not None
    liar = dealer(zmq_context, cluster.endpoint, b"liar")
    assert "result" in connect(liar, "liar")
    time.sleep(0.2)
    before = fuzz.rss_mib(cluster.broker.pid)
    options = {"queue": "q0", "priority": 5, "rate_limit": "5/s", "unique_for": 60, "cron": "0 0 1 1 *"}
    for i in range(2_000):
        queues = [f"{i}.{j}.{'q' * 50}" for j in range(100)]
        defaults = {f"{i}.{j}.{'n' * 2048}": options for j in range(20)}
        liar.send(rpc(wire.CONNECT, {"node": "liar", "methods": ["hostile.q"], "queues": queues, "defaults": defaults}, i))
        if i % 100 == 99:
            ping_s(zmq_context, cluster.endpoint)
    for i in range(30):
        defaults = {f"{i}.{j}.{'n' * MIB}": options for j in range(4)}
        assert "result" in connect(liar, "liar", defaults=defaults)
    ping_s(zmq_context, cluster.endpoint)
    growth = fuzz.rss_mib(cluster.broker.pid) - before
    print(f"2,030 fat connects: RSS growth {growth:.1f} MiB")
    assert cluster.broker.alive()
    assert growth < 64
