"""A node's Prometheus metrics (``zerotask node --metrics 127.0.0.1:9809``).

The node counts each outcome it reports (:meth:`NodeMetrics.count`, one dict increment in its loop);
the HTTP server's thread reads a copy of those counts, and the pool's workers, at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zerotask import metrics
from zerotask.node.base import Pool
from zerotask.wire import FAILED, FINISHED, RETRY


class NodeMetrics:
    """Counts for Prometheus, served on ``address`` (``HOST:PORT``) from :meth:`start` to :meth:`stop`.
    Raises ValueError for a malformed address, or one beyond this machine unless ``remote_ok``."""

    def __init__(self, address: str, remote_ok: bool = False) -> None:
        self.host, self.port = metrics.check_address(address, remote_ok)
        self.outcomes = {FINISHED: 0, FAILED: 0, RETRY: 0}
        self.server: metrics.Server | None = None
        self._pool: Pool | None = None

    def count(self, outcome: dict[str, Any]) -> None:
        """An outcome the node reports: FINISHED, FAILED, or RETRY when the task asks to be retried."""
        error = outcome.get("error")
        if error is None:
            self.outcomes[FINISHED] += 1
        elif isinstance(error, dict) and isinstance(data := error.get("data"), dict) and "retry_in_s" in data:
            self.outcomes[RETRY] += 1
        else:
            self.outcomes[FAILED] += 1

    def start(self, pool: Pool) -> None:
        """Serve on http://HOST:PORT/metrics. Raises ImportError without prometheus_client, OSError if it cannot bind."""
        self._pool = pool
        self.server = metrics.serve(self.host, self.port, self.collect)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        tasks = CounterMetricFamily("zerotask_node_tasks", "Outcomes this node reported, by state", labels=["state"])
        for state, count in self.outcomes.copy().items():
            tasks.add_metric([state], count)
        yield tasks
        if self._pool is None:
            return
        workers = list(self._pool.workers)
        yield GaugeMetricFamily("zerotask_node_workers", "Workers (processes or threads)", self._pool.count)
        yield GaugeMetricFamily("zerotask_node_busy_workers", "Workers running tasks", sum(not w.idle for w in workers))
