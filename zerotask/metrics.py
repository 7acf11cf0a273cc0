"""What the broker's and the node's Prometheus endpoints share: the address check, a histogram cheap
enough for the event loop, bounded label values, and the HTTP server.

prometheus_client is optional (``pip install zerotask[metrics]``): it is imported only by :func:`serve`,
so a broker or node without ``--metrics`` never needs it. Counting happens in the event loop on plain
ints and lists; the HTTP server's thread reads copies of them when scraped (a dict or list copy is one
step under the GIL), so a scrape never takes a lock the loop waits for.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from zerotask import sockets

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("zerotask.metrics")

OTHER = "other"  # the label value of every name beyond the cap
DEFAULT_MAX_LABELS = 1000
# Seconds: from a millisecond task to one that takes an hour.
DURATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def check_address(address: str, remote_ok: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port). Raises ValueError for a malformed one,
    for a host other machines can reach unless ``remote_ok`` (the endpoint has no login), and when
    prometheus_client is not installed."""
    host, sep, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--metrics wants HOST:PORT, e.g. 127.0.0.1:9808, not {address!r}")
    if not remote_ok and not sockets.is_local(f"tcp://{address}"):
        raise ValueError(
            f"refusing to serve metrics on {address}: other machines could read them, and the endpoint has no login."
            " Use 127.0.0.1, or accept the risk with --insecure (or run with CURVE keys)"
        )
    if importlib.util.find_spec("prometheus_client") is None:
        raise ValueError("--metrics needs prometheus_client: pip install 'zerotask[metrics]'")
    return host, int(port_text)


class Labels:
    """Label values for names a peer chooses (task names): the first ``cap`` names seen keep their own,
    every later one is :data:`OTHER`, so random names cannot grow the metrics without end. Safe to call
    from two threads: a race can let a name or two past the cap, never more."""

    def __init__(self, cap: int = DEFAULT_MAX_LABELS) -> None:
        self.cap = cap
        self._known: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._known:
            return name
        if len(self._known) < self.cap:
            self._known.add(name)
            return name
        return OTHER


class Histogram:
    """Counts per label value in fixed buckets, with the sum: an observation is a bisect and two adds."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self.buckets = buckets
        self._series: dict[str, list[float]] = {}  # label -> a count per bucket, +Inf last, then the sum

    def observe(self, label: str, value: float) -> None:
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def snapshot(self) -> dict[str, tuple[list[tuple[str, float]], float]]:
        """Each label's cumulative buckets (as Prometheus wants them) and sum, from a copy."""
        copied = {label: list(series) for label, series in self._series.copy().items()}
        result = {}
        for label, series in copied.items():
            cumulative, total = [], 0.0
            for bound, count in zip([*map(str, self.buckets), "+Inf"], series[:-1], strict=True):
                total += count
                cumulative.append((bound, total))
            result[label] = (cumulative, series[-1])
        return result


def copied(read: Callable[[], Mapping[str, int]]) -> dict[str, int]:
    """A copy of a dict another thread writes to; tries again in the rare case it changed mid-copy."""
    for _ in range(10):
        try:
            return dict(read())
        except RuntimeError:
            continue
    return {}


class Server:
    """The HTTP server of one process's ``/metrics``, in a daemon thread; :meth:`stop` ends it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)


def serve(host: str, port: int, collect: Callable[[], Iterable[Any]]) -> Server:
    """Serve ``collect()`` (prometheus_client metric families) and this process's CPU and memory on
    http://host:port/metrics. Raises ImportError without prometheus_client, OSError if it cannot bind."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    class _Collector:
        def collect(self) -> Iterable[Any]:
            return collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    ProcessCollector(registry=registry)
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return Server(server, thread)
