"""The broker announces what happens to tasks on its publish socket."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from zerotask import TaskError
from zerotask.client import Client, reachable
from zerotask.testing import Cluster, scaled, wait_until


def watch(cluster: Cluster, seen: list[dict[str, Any]]) -> threading.Thread:
    def collect() -> None:
        with Client(cluster.endpoint, timeout=scaled(10)) as client:
            for event in client.events(idle_timeout=scaled(3)):
                seen.append(event)

    watcher = threading.Thread(target=collect)
    watcher.start()
    return watcher


def subscribed(client: Client, seen: list[dict[str, Any]]) -> None:
    """Submit probe tasks until the watcher sees events: a SUB socket misses what comes before it is in."""

    def probe() -> bool:
        if seen:
            return True
        client.submit("add", 0, 0)
        return False

    wait_until(probe, 30, "the subscription to take effect")


def test_events_announce_queued_finished_and_failed(running: Cluster) -> None:
    seen: list[dict[str, Any]] = []
    watcher = watch(running, seen)
    client = running.client()
    subscribed(client, seen)
    done_id = client.submit("add", 1, 2)
    assert client.result(done_id, timeout=scaled(10)) == 3
    failed_id = client.submit("fail", "x")
    with pytest.raises(TaskError):
        client.result(failed_id, timeout=scaled(10))
    watcher.join(scaled(30))
    events = {(event["event"], event["task_id"]) for event in seen}
    assert {("queued", done_id), ("finished", done_id), ("queued", failed_id), ("failed", failed_id)} <= events


def test_events_command_prints_json_lines(running: Cluster) -> None:
    command = [sys.executable, "-m", "zerotask.cli", "events", "--broker", running.endpoint, "--idle-timeout", "3"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    client = running.client()
    try:
        task_ids = []
        for _ in range(6):  # the command takes a moment to subscribe: tasks until then go unseen
            task_ids.append(client.submit("add", 2, 2))
            time.sleep(0.5)
        output, _ = watcher.communicate(timeout=scaled(30))
    finally:
        watcher.kill()
    lines = [f'{{"event":"finished","task_id":"{task_id}","state":"FINISHED"}}' for task_id in task_ids]
    assert any(line in output.splitlines() for line in lines), output


@pytest.mark.parametrize(
    ("bound", "via", "expected"),
    [
        ("tcp://0.0.0.0:5556", "tcp://10.1.2.3:5555", "tcp://10.1.2.3:5556"),
        ("tcp://*:5556", "tcp://example.org:5555", "tcp://example.org:5556"),
        ("tcp://127.0.0.1:7000", "tcp://10.1.2.3:5555", "tcp://127.0.0.1:7000"),
        ("ipc:///tmp/events", "ipc:///tmp/requests", "ipc:///tmp/events"),
    ],
)
def test_a_wildcard_publish_address_is_reached_through_the_brokers_host(bound: str, via: str, expected: str) -> None:
    assert reachable(bound, via) == expected
