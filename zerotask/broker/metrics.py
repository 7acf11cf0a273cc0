"""The broker's Prometheus metrics (``zerotask broker --metrics 127.0.0.1:9808``), as a hook.

:class:`BrokerMetrics` counts in the broker's loop (submitted, finished by state, retried, and how long
each task took from its assignment to its outcome); :meth:`BrokerMetrics.collect` runs in the HTTP
server's thread at each scrape and reads copies of those counts, and of what the core knows now (queue
depth by task name, connected nodes) and the loop's lag. Task names are label values only up to a cap
(:class:`zerotask.metrics.Labels`): a client submitting random names cannot explode the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from zerotask import metrics
from zerotask.broker.assignment import NodeSlot
from zerotask.broker.core import BrokerCore
from zerotask.broker.hooks import Hooks
from zerotask.loop import EventLoop
from zerotask.store import TaskRecord
from zerotask.wire import FAILED, FINISHED, REVOKED

# The most assignment times kept: one per task a node holds, and a task handed back waits here until it
# is assigned again or ends. Beyond (far beyond any real number of tasks in flight), a task goes untimed.
MAX_TIMED = 1_000_000


class BrokerMetrics(Hooks):
    """Counts for Prometheus, served on ``address`` (``HOST:PORT``) from :meth:`start` to :meth:`stop`.
    Raises ValueError for a malformed address, or one beyond this machine unless ``remote_ok``.
    ``max_labels``: task names with a label value of their own."""

    def __init__(self, address: str, remote_ok: bool = False, max_labels: int = metrics.DEFAULT_MAX_LABELS) -> None:
        self.host, self.port = metrics.check_address(address, remote_ok)
        self.server: metrics.Server | None = None
        self.labels = metrics.Labels(max_labels)
        self.submitted = 0
        self.retried = 0
        self.finished = {FINISHED: 0, FAILED: 0, REVOKED: 0}
        self.durations = metrics.Histogram()
        self._assigned: dict[str, float] = {}  # task id -> when it was handed to a node (monotonic)
        self._core: BrokerCore | None = None
        self._loop: EventLoop | None = None

    # ---- hook points (the broker's loop) ---------------------------------------------------------------

    def after_enqueue(self, record: TaskRecord) -> None:
        self.submitted += 1
        self.labels(record.method)  # a name queued early gets its own label, for the queue depth too

    def before_assign(self, node: NodeSlot, records: list[TaskRecord]) -> None:
        if len(self._assigned) >= MAX_TIMED:
            return
        now = time.monotonic()
        for record in records:
            self._assigned[record.id] = now

    def on_retry(self, record: TaskRecord, attempt: int, delay_s: float) -> None:
        self.retried += 1
        self._assigned.pop(record.id, None)

    def after_finish(self, record: TaskRecord) -> None:
        if record.state in self.finished:
            self.finished[record.state] += 1
        assigned = self._assigned.pop(record.id, None)
        if assigned is not None:
            self.durations.observe(self.labels(record.method), time.monotonic() - assigned)

    def on_node_lost(self, node: NodeSlot, requeued: list[TaskRecord], reason: str) -> None:
        for record in requeued:
            self._assigned.pop(record.id, None)

    # ---- scraping (the HTTP server's thread) -----------------------------------------------------------

    def start(self, core: BrokerCore, loop: EventLoop) -> None:
        """Serve these metrics, the state of ``core`` and the lag of ``loop`` on http://HOST:PORT/metrics.
        Raises ImportError without prometheus_client, OSError if it cannot bind."""
        self._core, self._loop = core, loop
        self.server = metrics.serve(self.host, self.port, self.collect)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        yield CounterMetricFamily("zerotask_tasks_submitted", "Tasks queued (new, or failed ones queued again)", self.submitted)
        finished = CounterMetricFamily("zerotask_tasks_finished", "Tasks that reached a final state", labels=["state"])
        for state, count in self.finished.copy().items():
            finished.add_metric([state], count)
        yield finished
        yield CounterMetricFamily("zerotask_tasks_retried", "Failed attempts queued again", self.retried)
        durations = HistogramMetricFamily(
            "zerotask_task_duration_seconds", "From assignment to a node to the task's outcome", labels=["task"]
        )
        for label, (buckets, total) in self.durations.snapshot().items():
            durations.add_metric([label], buckets, total)
        yield durations
        core, loop = self._core, self._loop
        if core is None or loop is None:
            return
        depth = GaugeMetricFamily("zerotask_queue_depth", "Tasks queued, by queue (task name)", labels=["queue"])
        by_label: dict[str, int] = {}
        for name, count in metrics.copied(lambda: core.queued).items():
            label = self.labels(name)
            by_label[label] = by_label.get(label, 0) + count
        for label, count in by_label.items():
            depth.add_metric([label], count)
        yield depth
        yield GaugeMetricFamily("zerotask_nodes", "Nodes connected", len(list(core.nodes)))
        yield GaugeMetricFamily("zerotask_loop_lag_seconds", "How late the broker loop's last due timer ran", loop.lag_s)
