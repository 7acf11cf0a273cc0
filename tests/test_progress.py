"""report_progress with a real broker, node and workers: in a worker process, in the thread pool, and from
an async task; what callers see while the task runs, and after."""

from __future__ import annotations

import time
from typing import Any

import pytest

from zerotask.client import AsyncClient
from zerotask.progress import THROTTLE_S, report_progress, reporting
from zerotask.testing import Cluster, scaled, wait_until


def test_outside_a_task_report_progress_does_nothing() -> None:
    report_progress(1, 2)  # no error, nowhere to go


def test_reports_of_one_task_are_throttled_but_the_last_step_always_goes() -> None:
    sent: list[dict[str, Any]] = []
    with reporting("t1", sent.append):
        for step in range(1, 101):
            report_progress(step, 100)
    assert sent[0]["done"] == 1 and sent[-1]["done"] == 100
    assert len(sent) < 10  # a hundred calls in well under THROTTLE_S each: only a few go out
    assert THROTTLE_S > 0


@pytest.mark.parametrize(("pool", "method"), [("process", "count_up"), ("thread", "count_up"), ("process", "count_up_async")])
def test_a_caller_sees_the_progress_of_a_running_task(pool: str, method: str) -> None:
    with Cluster() as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks", extra=["--pool", pool])
        handle = client.call(method, 8, 0.25)
        seen = wait_until(lambda: handle.progress(), 10, "a progress report")
        assert seen["total"] == 8 and 1 <= seen["done"] <= 8
        later = wait_until(lambda: (now := handle.progress()) and now["done"] > seen["done"] and now, 10, "more progress")
        assert later["done"] > seen["done"]
        if method == "count_up":
            assert later["info"] == {"step": f"s{later['done']}"}
        assert handle.result(timeout=scaled(20)) == 8
        time.sleep(0.1)
        assert handle.progress() is None  # forgotten once the task ended
        assert cluster.client().progress(handle.id) is None
