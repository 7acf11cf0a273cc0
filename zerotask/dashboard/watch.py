"""What the dashboard knows of the broker, and how it reaches every open page.

:class:`Hub` fans JSON messages out to the connected server-sent-event streams, each with a bounded queue:
a page that does not read is dropped rather than allowed to grow the dashboard. :class:`BrokerWatch` runs
two threads, each with its own Client (sockets are per thread): one asks the broker for ``inspect`` every
second, one follows its event socket; both push what they learn through the hub and keep the last of it
for pages that connect later (all of it bounded).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

from zerotask import wire
from zerotask.client import Client
from zerotask.exceptions import UnknownMethod, ZerotaskError

log = logging.getLogger(__name__)

# The broker's admin methods (docs/protocol.md, section 5). TODO: use the constants in zerotask.wire once there.
INSPECT = "zerotask.broker.inspect"
TASKS = "zerotask.broker.tasks"
TASK = "zerotask.broker.task"
RETRY = "zerotask.broker.retry"
PURGE = "zerotask.broker.purge"

MAX_STREAMS = 50  # open event streams at most; more are refused
STREAM_QUEUE = 256  # messages waiting for one stream; beyond, it is dropped
RECENT_EVENTS = 200  # task events kept for pages that connect later
HISTORY_POINTS = 600  # one a second: ten minutes of throughput and latency
LATENCY_TRACKED = 10_000  # queued tasks whose queue time is remembered to measure their latency
EVENT_STATES = {"queued": wire.QUEUED, "retry": wire.RETRY, "finished": wire.FINISHED, "failed": wire.FAILED}


class Stream:
    """One open event stream: a bounded queue, and whether the hub dropped it for lagging."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue(STREAM_QUEUE)
        self.dropped = False


class Hub:
    """The open event streams. :meth:`open` returns None when :data:`MAX_STREAMS` are open."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self._lock = threading.Lock()
        self._streams: set[Stream] = set()
        self.max_streams = max_streams

    def open(self) -> Stream | None:
        with self._lock:
            if len(self._streams) >= self.max_streams:
                return None
            stream = Stream()
            self._streams.add(stream)
            return stream

    def close(self, stream: Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def push(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every stream; a stream whose queue is full is dropped (its page reconnects)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.messages.put_nowait(message)
            except queue.Full:
                stream.dropped = True
                self.close(stream)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)


class BrokerWatch:
    """Follows one broker for the dashboard. ``client_options`` go to every Client it makes (keys)."""

    def __init__(self, broker: str, hub: Hub, interval_s: float = 1.0, **client_options: Any) -> None:
        self.broker = broker
        self.hub = hub
        self.interval_s = interval_s
        self.client_options = client_options
        self._lock = threading.Lock()
        self._inspect: dict[str, Any] | None = None
        self._error: str | None = None
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_POINTS)
        self._queued_at: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._second: dict[str, float] = {"submitted": 0, "finished": 0, "latency_sum": 0.0, "latency_n": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def client(self, timeout_s: float = 5.0) -> Client:
        """A new Client for the calling thread (the caller closes it)."""
        return Client(self.broker, timeout=timeout_s, **self.client_options)

    def start(self) -> None:
        for target, name in [(self._poll, "dashboard-inspect"), (self._follow, "dashboard-events")]:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        """What a page needs when it connects: the last inspect, the recent events, the history."""
        with self._lock:
            return {
                "type": "snapshot",
                "inspect": self._inspect,
                "error": self._error,
                "events": list(self._events),
                "history": list(self._history),
            }

    # ---- inspect, every second -------------------------------------------------------------------

    def _poll(self) -> None:
        client = self.client(timeout_s=max(2.0, self.interval_s * 2))
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    inspect, error = self._inspect_once(client), None
                except ZerotaskError as problem:  # the broker is down or slow: say so, and keep trying
                    client.close()
                    inspect, error = None, f"{type(problem).__name__}: {problem}"
                point = self._history_point(inspect)
                with self._lock:
                    self._inspect, self._error = (inspect or self._inspect), error
                    self._history.append(point)
                self.hub.push({"type": "inspect", "inspect": inspect, "error": error, "point": point})
        finally:
            client.close()

    @staticmethod
    def _inspect_once(client: Client) -> dict[str, Any]:
        try:
            result: dict[str, Any] = client.rpc(INSPECT, {}, client.timeout)
            return result
        except UnknownMethod:  # an older broker: what `info` tells, in inspect's shape
            info = client.info()
            return {
                "nodes": [{**node, "busy": node.get("tasks"), "last_seen_s": None} for node in info.get("nodes", [])],
                "queues": [{"name": name, "depth": depth, "oldest_s": None} for name, depth in info.get("queued", {}).items()],
                "states": {},
                "throughput": None,
                "uptime_s": None,
            }

    def _history_point(self, inspect: dict[str, Any] | None) -> dict[str, Any]:
        with self._lock:
            second, self._second = self._second, {"submitted": 0, "finished": 0, "latency_sum": 0.0, "latency_n": 0}
        throughput = (inspect or {}).get("throughput") or {}
        latency_n = second["latency_n"]
        return {
            "t": time.time(),
            "finished_per_s": throughput.get("finished_per_s", second["finished"] / self.interval_s),
            "submitted_per_s": throughput.get("submitted_per_s", second["submitted"] / self.interval_s),
            "latency_s": second["latency_sum"] / latency_n if latency_n else None,
        }

    # ---- task events, as they come ---------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            client = self.client()
            try:
                for event in client.events():
                    self._on_event(event)
            except ZerotaskError as problem:
                log.warning("cannot follow the broker's events (%s); trying again", problem)
                self._stop.wait(2.0)
            finally:
                client.close()

    def _on_event(self, event: dict[str, Any]) -> None:
        now = time.time()
        task_id = str(event.get("task_id"))
        name = str(event.get("event"))
        message = {"type": "event", "at": now, **event, "state": event.get("state") or EVENT_STATES.get(name, name.upper())}
        with self._lock:
            if name == "queued":
                self._second["submitted"] += 1
                self._queued_at[task_id] = now
                while len(self._queued_at) > LATENCY_TRACKED:
                    self._queued_at.popitem(last=False)
            elif name in ("finished", "failed", "revoked"):
                self._second["finished"] += 1
                queued_at = self._queued_at.pop(task_id, None)
                if queued_at is not None:
                    self._second["latency_sum"] += now - queued_at
                    self._second["latency_n"] += 1
            self._events.append(message)
        self.hub.push(message)
