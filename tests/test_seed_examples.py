"""The seed README's examples, verbatim (print made a function for Python 3), on the default ports.

They use the defaults the seed promises: the broker binds ports 5555 and 5556 on 127.0.0.1 and keeps its
tasks in ./zerotask.db; nodes and clients find it at tcp://127.0.0.1:5555.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerotask.client import Client
from zerotask.testing import ManagedProcess, scaled, wait_until

BROKER_EXAMPLE = """
from zerotask.broker import Broker
from zerotask.task import task

@task(name="broker.new_hotness")
def new_hotness():
    return 42

Broker().start()
"""

NODE_EXAMPLE = """
from zerotask.node import Node
from zerotask.task import task

@task
def echo(foo):
    return foo

Node().start()
"""

CLIENT_EXAMPLE = """
from zerotask.client import Client
client = Client("tcp://127.0.0.1:5555")
print(client.add(5, 6))
# Should print 11
"""

ASYNC_CLIENT_EXAMPLE = """
from zerotask.client import AsyncClient

client = AsyncClient("tcp://127.0.0.1:5555")
task = client.add(5, 6)
print(task.status()) # should be "QUEUED", "RUNNING", etc.
result = task.result() # or task.wait()
print(result) # once again, 11
"""


@pytest.fixture
def seed_cluster(tmp_path: Path) -> Iterator[Path]:
    """The seed's broker example, its node example, and `python -m zerotask.node` for add/subtract."""
    (tmp_path / "broker_example.py").write_text(BROKER_EXAMPLE)
    (tmp_path / "node_example.py").write_text(NODE_EXAMPLE)
    processes = [ManagedProcess([sys.executable, "broker_example.py"], tmp_path / "broker.log", cwd=tmp_path)]
    try:
        processes.append(ManagedProcess([sys.executable, "node_example.py"], tmp_path / "node.log", cwd=tmp_path))
        processes.append(
            ManagedProcess([sys.executable, "-m", "zerotask.node", "--workers", "1"], tmp_path / "demo.log", cwd=tmp_path)
        )

        def two_nodes() -> bool:
            for process in processes:
                if not process.alive():
                    raise RuntimeError(process.output())
            try:
                with Client(timeout=1) as client:
                    return len(client.info()["nodes"]) == 2
            except TimeoutError:
                return False

        wait_until(two_nodes, 30, "the seed's broker and two nodes")
        yield tmp_path
    finally:
        for process in reversed(processes):
            process.stop()


def run_script(directory: Path, source: str) -> str:
    script = directory / "client_example.py"
    script.write_text(textwrap.dedent(source))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=scaled(60), cwd=directory)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_seed_client_example_prints_11(seed_cluster: Path) -> None:
    assert run_script(seed_cluster, CLIENT_EXAMPLE) == "11\n"


def test_seed_async_client_example(seed_cluster: Path) -> None:
    status, result = run_script(seed_cluster, ASYNC_CLIENT_EXAMPLE).split()
    assert status in {"QUEUED", "ASSIGNED", "RUNNING", "FINISHED"}
    assert result == "11"


def test_seed_node_and_broker_examples_serve_their_tasks(seed_cluster: Path) -> None:
    with Client("tcp://127.0.0.1:5555", timeout=scaled(20)) as client:
        assert client.echo("hello") == "hello"  # from the node example
        assert client.broker.new_hotness() == 42  # the broker example's custom broker method
        assert client.subtract(5, 6) == -1  # python -m zerotask.node's demo tasks
    assert (seed_cluster / "zerotask.db").exists()  # the broker's default embedded store


def test_seed_client_module_runs_the_demo(seed_cluster: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "zerotask.client"], capture_output=True, text=True, timeout=scaled(60))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["add(5, 6) = 11", "subtract(5, 6) = -1"]
