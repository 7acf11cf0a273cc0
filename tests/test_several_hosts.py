"""Several machines, simulated with network namespaces (tests/netns.py): brokers on a shared Redis store,
nodes and a client on hosts of their own, and a broker's host cut off from the network under load."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Host, Network, network_or_skip
from tests.several_hosts_client import BLOCKING_OFFSET
from zerotask.testing import ManagedProcess, scaled, wait_until
from zerotask.testing_redis import redis_available

REDIS_PORT = 6379
BROKER_PORT = 5555


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with network_or_skip(tmp_path) as made:
        yield made


def start_redis(host: Host, directory: Path, probe_from: Host) -> ManagedProcess:
    """redis-server on ``host``, appending every write to its AOF in ``directory``; waits until it answers
    a PING sent from ``probe_from``."""
    directory.mkdir(exist_ok=True)
    args = ["redis-server", "--bind", host.address, "--port", str(REDIS_PORT), "--appendonly", "yes"]
    args += ["--dir", str(directory), "--save", "", "--protected-mode", "no"]
    redis = host.start(args, "redis")

    def answers() -> bool:
        if not redis.alive():
            raise RuntimeError(f"redis-server exited:\n{redis.output()}")
        with probe_from.socket() as probe:
            probe.settimeout(1)
            try:
                probe.connect((host.address, REDIS_PORT))
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    wait_until(answers, 20, "redis-server to answer")
    return redis


def start_broker(host: Host, store: str) -> ManagedProcess:
    """A broker bound to ``host``'s address (so, as there are no keys, --insecure)."""
    bind, publish = host.endpoint(BROKER_PORT), host.endpoint(BROKER_PORT + 1)
    args = [sys.executable, "-m", "zerotask.broker", "--bind", bind, "--publish", publish, "--store", store, "--insecure"]
    return host.start(args, "broker")


def start_node(host: Host, brokers: str, workers: int = 2) -> ManagedProcess:
    args = [sys.executable, "-m", "zerotask.node", "tests.tasks", "--broker", brokers, "--workers", str(workers)]
    return host.start(args, "node")


def start_load(host: Host, directory: Path, endpoint: str, probe: list[str], nodes: int, tasks: int) -> ManagedProcess:
    """The client host's program (tests/several_hosts_client.py), writing to ``directory``."""
    args = [sys.executable, "-m", "tests.several_hosts_client", "--endpoint", endpoint, "--probe", *probe]
    args += ["--nodes", str(nodes), "--tasks", str(tasks), "--dir", str(directory)]
    return host.start(args, "client")


def wait_for(
    directory: Path, condition: Callable[[dict[str, Any]], bool], services: list[ManagedProcess], timeout_s: float, what: str
) -> None:
    """Until ``condition(progress)`` holds for the load's progress.json; fails at once, with its log, if one of
    ``services`` exits first."""

    def reached() -> bool:
        for process in services:
            if not process.alive():
                raise RuntimeError(f"{process.log_path.name} exited ({process.process.returncode}):\n{process.output()[-5000:]}")
        try:
            progress = json.loads((directory / "progress.json").read_text())
        except FileNotFoundError:
            return False
        return condition(progress)

    wait_until(reached, timeout_s, what)


def finish(load: ManagedProcess, directory: Path, timeout_s: float) -> dict[str, Any]:
    """The load's report, once it exits (within ``timeout_s``, scaled)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while load.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not load.alive(), f"the load did not finish within {scaled(timeout_s):.0f} s:\n{load.output()[-5000:]}"
    assert load.process.returncode == 0, load.output()[-5000:]
    report: dict[str, Any] = json.loads((directory / "report.json").read_text())
    return report


def check_every_outcome(report: dict[str, Any]) -> None:
    """Every task ran with the right result, each caller was told once, and the broker agrees."""
    expected = {str(i): i + 1 for i in range(report["tasks"])}
    seen = {i: outcomes for i, outcomes in report["seen"].items() if outcomes != [expected[i]]}
    assert not seen, f"{len(seen)} tasks were not told exactly their result once, e.g. {list(seen.items())[:5]}"
    wrong = {i: result for i, result in report["asked_again"].items() if result != expected[i]}
    assert not wrong, f"{len(wrong)} results differ when asked again, e.g. {list(wrong.items())[:5]}"
    stored = {i: result for i, result in report["stored"].items() if result != expected[i]}
    assert not stored, f"{len(stored)} stored outcomes differ from what the caller saw, e.g. {list(stored.items())[:5]}"
    calls = report["blocking"]
    assert calls and not report["blocking_still_running"]
    bad = [call for call in calls if call[3] != call[2] + BLOCKING_OFFSET]
    assert not bad, f"{len(bad)} of {len(calls)} blocking calls failed, e.g. {bad[:5]}"


def longest_silence_after(report: dict[str, Any], cut_at: float, what: str) -> float:
    """The longest the blocking client waited for an answer after the cut (which may fall in any call)."""
    ends: list[float] = sorted(end for _, end, _, _ in report["blocking"])
    after = [end for end in ends if end > cut_at]
    assert after, "the blocking client never answered after the cut"
    longest = max(end - max(cut_at, before) for before, end in zip([cut_at, *ends], ends, strict=False) if end > cut_at)
    print(f"\nafter {what} was cut off, the blocking client waited at most {longest:.2f} s for an answer")
    print(f"(its first answer came {after[0] - cut_at:.2f} s after the cut; {len(after)} calls were answered after it)")
    return longest


def test_every_task_completes_when_a_node_host_is_cut_off_under_load(network: Network, tmp_path: Path) -> None:
    """One broker (SQLite) on host a, nodes on hosts b and d, the client on host c; b is cut off: the broker
    hears nothing from its node for 3 s, declares it dead, and its tasks run again on d."""
    a, b, c, d = (network.host(name) for name in ("a", "b", "c", "d"))
    broker = start_broker(a, str(tmp_path / "tasks.db"))
    nodes = [start_node(host, a.endpoint(BROKER_PORT)) for host in (b, d)]
    load_dir = tmp_path / "load"
    load_dir.mkdir()
    load = start_load(c, load_dir, a.endpoint(BROKER_PORT), [a.endpoint(BROKER_PORT)], nodes=2, tasks=1500)
    wait_for(load_dir, lambda progress: progress["done"] >= 300, [broker, *nodes, load], 90, "300 done before the cut")
    b.cut_off()
    cut_at = time.monotonic()
    report = finish(load, load_dir, 120)
    check_every_outcome(report)
    assert longest_silence_after(report, cut_at, "host b (a node)") < scaled(15)  # 3 s to declare the node dead


@pytest.mark.timeout(600)
def test_every_task_completes_when_a_broker_host_is_cut_off_under_load(network: Network, tmp_path: Path) -> None:
    if (missing := redis_available()) is not None:
        pytest.skip(missing)
    pytest.importorskip("redis", reason="the Redis store needs redis-py (pip install 'zerotask[redis]')")
    r, a, b, c = (network.host(name) for name in ("r", "a", "b", "c"))
    redis = start_redis(r, tmp_path / "redis", probe_from=c)
    store = f"redis://{r.address}:{REDIS_PORT}/0"
    brokers = [start_broker(a, store), start_broker(b, store)]
    endpoints = [a.endpoint(BROKER_PORT), b.endpoint(BROKER_PORT)]  # a first: the client starts there
    nodes = [start_node(host, ",".join(endpoints)) for host in (a, b)]
    load_dir = tmp_path / "load"
    load_dir.mkdir()
    load = start_load(c, load_dir, ",".join(endpoints), endpoints, nodes=2, tasks=3000)
    wait_for(load_dir, lambda progress: progress["done"] >= 600, [redis, *brokers, *nodes, load], 120, "600 done before the cut")

    a.cut_off()  # broker a, node a and everything they hold: gone without a word
    cut_at = time.monotonic()
    report = finish(load, load_dir, 300)

    check_every_outcome(report)
    recovery_s = longest_silence_after(report, cut_at, "host a (a broker and a node)")
    assert recovery_s < scaled(15)  # the target is 5 s
