"""The command line: every entry point answers -h, refuses what it cannot use with a clear message, and
`zerotask call` calls a task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zerotask.client import Client
from zerotask.testing import Cluster, scaled


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "zerotask.broker", "-h"],
        ["-m", "zerotask.node", "-h"],
        ["-m", "zerotask.client", "-h"],
        ["-m", "zerotask.cli", "broker", "-h"],
        ["-m", "zerotask.cli", "node", "-h"],
        ["-m", "zerotask.cli", "call", "-h"],
        ["-m", "zerotask.cli", "map", "-h"],
        ["-m", "zerotask.cli", "--help"],
    ],
)
def test_help(command: list[str]) -> None:
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_broker_help_names_its_options() -> None:
    done = subprocess.run([sys.executable, "-m", "zerotask.broker", "-h"], capture_output=True, text=True, timeout=scaled(30))
    for option in ("--bind", "--publish", "--store", "--log-level"):
        assert option in done.stdout


def test_node_help_names_its_options() -> None:
    done = subprocess.run([sys.executable, "-m", "zerotask.node", "-h"], capture_output=True, text=True, timeout=scaled(30))
    for option in ("--broker", "--workers", "MODULE"):
        assert option in done.stdout


def test_zerotask_call_prints_the_result_as_json(running: Cluster) -> None:
    def call(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "zerotask.cli", "call", *args, "--broker", running.endpoint, "--timeout", "20"]
        return subprocess.run(command, capture_output=True, text=True, timeout=scaled(60))

    assert call("add", "5", "6").stdout == "11\n"
    assert call("echo", "x", "[1, 2]", "--kwargs", '{"k": null}').stdout == '{"args":["x",[1,2]],"kwargs":{"k":null}}\n'
    failed = call("fail", "boom")
    assert failed.returncode == 1 and "ValueError: boom" in failed.stderr
    assert call("no_such_task").returncode == 1


def test_make_demo_script_runs_and_stops_everything() -> None:
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    done = subprocess.run([sys.executable, str(demo)], capture_output=True, text=True, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    assert "client.add(5, 6)      = 11" in done.stdout
    assert "sum 99990000" in done.stdout
    assert done.stdout.rstrip().endswith("broker and node stopped")


@pytest.mark.parametrize("endpoint", ["nonsense", "tcp://127.0.0.1:99999", "tcp://127.0.0.1", "udp://127.0.0.1:5555"])
def test_a_node_given_a_malformed_broker_endpoint_refuses_to_start(endpoint: str) -> None:
    """It used to log nothing, run on, and then ignore SIGTERM (a goodbye blocked on a socket with no peer)."""
    command = [sys.executable, "-m", "zerotask.node", "--broker", endpoint, "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2
    assert "invalid endpoint" in done.stderr and endpoint in done.stderr


def test_a_broker_given_a_malformed_endpoint_refuses_to_start() -> None:
    command = [sys.executable, "-m", "zerotask.broker", "--bind", "tcp://*:http", "--store", "memory"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2 and "invalid endpoint" in done.stderr


def test_zerotask_broker_imports_modules_to_serve_broker_methods(cluster: Cluster) -> None:
    """`zerotask broker MODULE` imports it as `zerotask node` does: the seed's @task(name="broker.new_hotness")
    is then served by the broker itself, with no node."""
    cluster.start_broker("tests.broker_tasks")
    with Client(cluster.endpoint, timeout=scaled(10)) as client:
        assert client.call("broker.new_hotness") == 42
