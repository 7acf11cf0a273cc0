"""EventLoop: ZeroMQ sockets polled with callbacks, timers, and clean signal handling (the seed's Server).

Broker and Node each run one. An EventLoop does nothing until :meth:`start`, which creates the ZeroMQ
context and the sockets (in :meth:`setup`), then runs the loop in the calling thread until :meth:`stop`
or SIGTERM / SIGINT. A second signal while stopping forces the process out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import heapq
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

log = logging.getLogger(__name__)

Callback = Callable[[], None]


@dataclass(order=True)
class Timer:
    when: float
    sequence: int
    callback: Callback = field(compare=False)
    interval_s: float | None = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)
    on_cancel: Callback | None = field(compare=False, default=None, repr=False)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel()


class Scheduler(Protocol):
    """What runs a callback later: the EventLoop, or a manual clock in tests."""

    def call_later(self, delay_s: float, callback: Callback) -> Timer: ...


COLLECT_EVERY = 50_000  # allocations between two young-generation collections in a broker or node (Python: 700)


def own_process() -> None:
    """Tune the cyclic garbage collector for a broker or node process run from the command line (never
    for a loop inside someone else's program: the setting is the process's). Every task allocates a few
    dozen objects, so at Python's default the collector ran every ~20 tasks, and with many tasks held
    in memory its older generations' passes took about a fifth of the broker's CPU. Collecting the young
    generation every COLLECT_EVERY allocations instead keeps the garbage bounded at a fraction of the
    cost. Almost nothing the broker makes is cyclic (a throughput run of 40,000 tasks left under 300
    objects for the collector to free), so what bounds the setting is a pass's cost, not memory: each
    pass traverses what is still alive, the tasks in flight. At every 10,000 allocations the passes (and
    the middle generation's, ten times rarer) took 1.4 to 2.5 µs of the broker's CPU a task in such a run,
    at 50,000 about 0.7. What was imported before the loop starts is frozen, never traversed again (and
    worker processes forked from a node share those pages instead of copying them)."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(COLLECT_EVERY, middle, oldest)
    gc.freeze()


_malloc_trim: Callable[[int], int] | None = None


def give_back_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``; elsewhere nothing). After
    parsing a message of many megabytes the allocator keeps what it freed, tens of MB that the process's
    RSS goes on counting: the broker calls this after a round that read such a message (a rare one, and
    cheap next to parsing it)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = lambda pad: 0  # noqa: E731
    _malloc_trim(0)


_MAX_POLL_MS = 86_400_000
MAX_SILENCE_S = 32.0  # the longest a peer waits for a silent broker before trying again


class Silence:
    """How long the broker has been silent, and when to give up on the connection: after ``liveness``
    heartbeats without a word, then twice as long each time it stays away, up to MAX_SILENCE_S (the
    ZeroMQ guide's Paranoid Pirate). The node, the Client and the AsyncClient's connection share it."""

    def __init__(self, heartbeat_s: float, liveness: int) -> None:
        self.limit_s = self.base_s = heartbeat_s * liveness
        self.last_heard = time.monotonic()

    def heard(self) -> None:
        """Anything arrived: the broker is alive, and the backoff starts over."""
        self.last_heard = time.monotonic()
        self.limit_s = self.base_s

    def silent_s(self) -> float:
        return time.monotonic() - self.last_heard

    def overdue(self) -> bool:
        """True once the silence passed the limit; the limit then doubles and the clock restarts, so
        the caller reconnects now and, while the broker stays away, less and less often."""
        if self.silent_s() <= self.limit_s:
            return False
        self.limit_s = min(self.limit_s * 2, MAX_SILENCE_S)
        self.last_heard = time.monotonic()
        return True


class EventLoop:
    """Polls sockets and file descriptors, calling one callback per ready source, and runs timers."""

    def __init__(self) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._poller = zmq.Poller()
        self._callbacks: dict[Any, Callback] = {}
        self._timers: list[Timer] = []
        self._timer_sequence = 0
        self._cancelled_timers = 0  # cancelled, still in the heap
        self.lag_s = 0.0  # how late the last due timer ran: the loop's lag
        self._running = False
        self._stopping_signals = 0
        self._wakeup_reader: socket.socket | None = None
        self._wakeup_writer: socket.socket | None = None

    # ---- for subclasses --------------------------------------------------------------------------

    def setup(self) -> None:
        """Create sockets and register them with :meth:`add_socket`. Called by :meth:`start`."""

    def teardown(self) -> None:
        """Release what :meth:`setup` made. Sockets are closed with the context afterwards."""

    def after_events(self) -> None:
        """Called after each round of callbacks and timers: the place to flush batched work."""

    def on_stop_signal(self, signum: int) -> None:
        """First SIGTERM / SIGINT: stop the loop. Subclasses may start a graceful stop instead."""
        self.stop()

    # ---- registration ----------------------------------------------------------------------------

    def add_socket(self, source: Any, callback: Callback) -> None:
        """Call ``callback()`` whenever ``source`` (a ZeroMQ socket or a file descriptor) is readable."""
        self._callbacks[source] = callback
        self._poller.register(source, zmq.POLLIN)

    def remove_socket(self, source: Any) -> None:
        if source in self._callbacks:
            del self._callbacks[source]
            self._poller.unregister(source)

    def call_later(self, delay_s: float, callback: Callback) -> Timer:
        return self._add_timer(delay_s, callback, None)

    def call_every(self, interval_s: float, callback: Callback) -> Timer:
        return self._add_timer(interval_s, callback, interval_s)

    def _add_timer(self, delay_s: float, callback: Callback, interval_s: float | None) -> Timer:
        self._timer_sequence += 1
        timer = Timer(time.monotonic() + delay_s, self._timer_sequence, callback, interval_s, on_cancel=self._timer_cancelled)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        """Cancelled timers leave the heap when they reach its top, or all at once when they are most of
        it: many waits cancelled early (answered before their timeout) must not grow the heap for ever."""
        self._cancelled_timers += 1
        if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(self._timers):
            self._timers = [timer for timer in self._timers if not timer.cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    # ---- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Set up and run the loop until stopped. Blocks; returns after :meth:`teardown`."""
        self.context = zmq.Context()
        self._install_signal_handlers()
        try:
            self.setup()
            self._running = True
            self._loop()
        finally:
            try:
                self.teardown()
            finally:
                self._restore_signal_handlers()
                self.context.destroy(linger=0)
                self.context = None

    def stop(self) -> None:
        """Ask the loop to end after the current round. Safe to call from a signal handler."""
        self._running = False

    def _loop(self) -> None:
        while self._running:
            for source, _ in self._poller.poll(self._poll_timeout_ms()):
                callback = self._callbacks.get(source)
                if callback is not None:
                    callback()
            self._run_due_timers()
            self.after_events()

    def _poll_timeout_ms(self) -> int | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
            self._cancelled_timers -= 1
        if not self._timers:
            return None
        # At most a day: a timer absurdly far off (a rate limit of 1e-30/s) must not overflow the poll.
        return min(_MAX_POLL_MS, max(0, int((self._timers[0].when - time.monotonic()) * 1000) + 1))

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                self._cancelled_timers -= 1
                continue
            self.lag_s = now - timer.when
            if timer.interval_s is not None:
                timer.when = now + timer.interval_s
                heapq.heappush(self._timers, timer)
            timer.callback()

    # ---- signals ---------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._previous_handlers: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signals are delivered to the main thread only; an embedded server is stopped with stop()
        # The wakeup fd makes a blocking poll return as soon as a signal arrives.
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._wakeup_reader.setblocking(False)
        self._wakeup_writer.setblocking(False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wakeup_writer.fileno())
        self.add_socket(self._wakeup_reader.fileno(), self._drain_wakeup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._handle_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
        if self._wakeup_reader is not None and self._wakeup_writer is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self.remove_socket(self._wakeup_reader.fileno())
            self._wakeup_reader.close()
            self._wakeup_writer.close()
            self._wakeup_reader = self._wakeup_writer = None

    def _drain_wakeup(self) -> None:
        assert self._wakeup_reader is not None
        try:
            while self._wakeup_reader.recv(512):
                pass
        except BlockingIOError:
            pass

    def _handle_signal(self, signum: int, frame: Any) -> None:
        self._stopping_signals += 1
        if self._stopping_signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("signal %d: stopping", signum)
        self.on_stop_signal(signum)
