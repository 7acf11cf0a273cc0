"""Prometheus metrics: ``zerotask broker --metrics`` and ``zerotask node --metrics``, scraped over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from zerotask.broker.core import BrokerCore  # noqa: E402
from zerotask.broker.metrics import BrokerMetrics  # noqa: E402
from zerotask.exceptions import TaskError  # noqa: E402
from zerotask.loop import EventLoop  # noqa: E402
from zerotask.metrics import OTHER  # noqa: E402
from zerotask.store import MemoryStore  # noqa: E402
from zerotask.testing import Cluster, ManualClock, free_port, scaled, wait_until  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=scaled(10)) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_broker_and_node_metrics_count_tasks_queues_and_nodes(cluster: Cluster, tmp_path: Path) -> None:
    broker_port, node_port = free_port(), free_port()
    cluster.start_broker("--metrics", f"127.0.0.1:{broker_port}")
    client = cluster.client()
    # No node yet: the tasks wait, and the queue depth shows them.
    waiting = [client.submit("add", i, i) for i in range(3)]
    before = scrape(broker_port)
    assert value(before, "zerotask_queue_depth", queue="add") == 3
    assert value(before, "zerotask_nodes") == 0
    assert value(before, "zerotask_tasks_submitted_total") == 3

    cluster.start_node("tests.tasks", workers=2, extra=["--metrics", f"127.0.0.1:{node_port}"])
    assert [client.result(task_id, timeout=scaled(30)) for task_id in waiting] == [0, 2, 4]
    with pytest.raises(TaskError):
        client.call("fail", "on purpose")
    assert client.call("flaky", str(tmp_path / "attempts"), 1) == 2  # one failure, retried once

    after = scrape(broker_port)
    assert value(after, "zerotask_tasks_submitted_total") == 5
    assert value(after, "zerotask_tasks_finished_total", state="FINISHED") == 4
    assert value(after, "zerotask_tasks_finished_total", state="FAILED") == 1
    assert value(after, "zerotask_tasks_finished_total", state="REVOKED") == 0
    assert value(after, "zerotask_tasks_retried_total") == 1
    assert value(after, "zerotask_queue_depth", queue="add") is None  # nothing queued any more
    assert value(after, "zerotask_nodes") == 1
    assert value(after, "zerotask_task_duration_seconds_count", task="add") == 3
    assert value(after, "zerotask_task_duration_seconds_count", task="fail") == 1
    assert value(after, "zerotask_task_duration_seconds_bucket", task="add", le="+Inf") == 3
    lag = value(after, "zerotask_loop_lag_seconds")
    assert lag is not None and 0 <= lag < scaled(5)

    node = scrape(node_port)
    assert value(node, "zerotask_node_tasks_total", state="FINISHED") == 4
    assert value(node, "zerotask_node_tasks_total", state="FAILED") == 1
    assert value(node, "zerotask_node_tasks_total", state="RETRY") == 1
    assert value(node, "zerotask_node_workers") == 2
    wait_until(lambda: value(scrape(node_port), "zerotask_node_busy_workers") == 0, 10, "idle workers")


def test_random_task_names_cannot_exceed_the_label_cap() -> None:
    counts = BrokerMetrics("127.0.0.1:0", max_labels=5)
    core = BrokerCore(MemoryStore(), ManualClock(), [counts])
    names = [f"random-{uuid.uuid4().hex}" for _ in range(50)]
    records = [core.submit(name, [], {}) for name in names]  # no node: every name waits in its own queue
    counts.start(core, EventLoop())
    try:
        assert counts.server is not None
        queued = {labels: v for (name, labels), v in scrape(counts.server.port).items() if name == "zerotask_queue_depth"}
        assert len(queued) == 6  # five names of their own, and "other"
        assert queued[(("queue", OTHER),)] == 45
        assert sum(queued.values()) == 50

        node = core.connect(b"n1", names, credit=len(names))
        core.assign()
        core.report(node, [{"task_id": record.id, "result": None} for record in records])
        samples = scrape(counts.server.port)
        timed = {dict(labels)["task"] for (name, labels) in samples if name == "zerotask_task_duration_seconds_count"}
        assert len(timed) == 6 and OTHER in timed
        assert value(samples, "zerotask_task_duration_seconds_count", task=OTHER) == 45
        assert value(samples, "zerotask_tasks_finished_total", state="FINISHED") == 50
    finally:
        counts.stop()


@pytest.mark.parametrize("command", ["broker", "node"])
def test_metrics_beyond_this_machine_without_insecure_refuse_to_start(command: str) -> None:
    args = [sys.executable, "-m", "zerotask.cli", command, "--metrics", "0.0.0.0:9808"]
    if command == "broker":
        args += ["--store", "memory", "--bind", f"tcp://127.0.0.1:{free_port()}", "--publish", f"tcp://127.0.0.1:{free_port()}"]
    else:
        args += ["--broker", f"tcp://127.0.0.1:{free_port()}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2
    assert "refusing to serve metrics on 0.0.0.0:9808" in done.stderr
