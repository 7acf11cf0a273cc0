"""The client role, in a process of its own: ``python -m bench.client KIND TARGET``.

Every system's client runs here, never in the benchmark process, so that nothing else (no other run's
leftovers, no sampling) shares the timed process. KIND is ``zerotask`` (TARGET: the broker's endpoint),
``raw`` (the raw ceiling broker's frontend) or ``celery`` (the Redis URL). The benchmark sends one JSON
object per line on stdin and reads one per line on stdout:

- ``{"op": "throughput", "count": N, "warmup": W, "window": K, "timeout_s": T}``: runs W tasks, then
  times N (zerotask: AsyncClient, all submitted before the first result is awaited; raw: K requests in
  flight; Celery: ``send_task`` then ``join_native``); answers ``{"seconds": ..., "sum_ok": ...}``.
- ``{"op": "latency", "calls": N, "warmup": W, "timeout_s": T}``: makes W blocking add(1, 2) calls,
  answers ``{"ready": true}`` and waits for a ``"go"`` line (the benchmark reads the CPU counters of
  every process in between), then times N calls one at a time and answers ``{"latencies_s": [...],
  "calls_ok": ...}``. Nothing but the calls runs between "go" and that answer.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zmq

from bench import cpu
from bench.config import Config, expected_sum, pairs
from bench.procs import Process, log_path

Call = Callable[[], Any]


class Driver:
    """What a client does for one kind of system: a throughput batch, and one blocking add(1, 2)."""

    def produce(self, work: list[tuple[int, int]], window: int, timeout_s: float) -> int:
        """Run every add(x, y) and return the sum of the results."""
        raise NotImplementedError

    def blocking_add(self, timeout_s: float) -> Call:
        """A function that makes one blocking add(1, 2) call and returns its result."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Zerotask(Driver):
    def __init__(self, endpoint: str) -> None:
        from zerotask.client import Client

        self.endpoint = endpoint
        self._client: Client | None = None

    def produce(self, work: list[tuple[int, int]], window: int, timeout_s: float) -> int:
        from zerotask.client import AsyncClient

        with AsyncClient(self.endpoint) as client:
            handles = [client.submit("add", x, y) for x, y in work]
            return sum(handle.result(timeout=timeout_s) for handle in handles)

    def blocking_add(self, timeout_s: float) -> Call:
        from zerotask.client import Client

        if self._client is None:
            self._client = Client(self.endpoint, timeout=timeout_s)
        client = self._client
        return lambda: client.add(1, 2)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Raw(Driver):
    """A bare DEALER speaking the raw ceiling's protocol: ``{"id", "method", "params"}`` in orjson."""

    def __init__(self, endpoint: str) -> None:
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self.produce([(0, 0)], 1, 30.0)  # answered once the broker and a worker are up

    def produce(self, work: list[tuple[int, int]], window: int, timeout_s: float) -> int:
        """Send every add(x, y) with at most ``window`` in flight; return the sum of the results."""
        sock = self._socket
        total = sent = received = 0
        while received < len(work):
            while sent < len(work) and sent - received < window:
                x, y = work[sent]
                sock.send(orjson.dumps({"id": sent, "method": "add", "params": [x, y]}))
                sent += 1
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"no reply within {timeout_s} s ({received} of {len(work)} received)")
            while received < sent:
                try:
                    reply = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                total += orjson.loads(reply)["result"]
                received += 1
        return total

    def blocking_add(self, timeout_s: float) -> Call:
        sock, timeout_ms = self._socket, int(timeout_s * 1000)
        request = [0]

        def add() -> Any:
            request[0] += 1
            sock.send(orjson.dumps({"id": request[0], "method": "add", "params": [1, 2]}))
            if not sock.poll(timeout_ms):
                raise TimeoutError(f"no reply within {timeout_s} s")
            return orjson.loads(sock.recv())["result"]

        return add

    def close(self) -> None:
        self._socket.close(linger=0)


class Celery(Driver):
    def __init__(self, url: str) -> None:
        from bench.celery_app import ADD, make_app

        self._name = ADD
        self._app = make_app(url)
        self._app.send_task(ADD, (0, 0)).get(timeout=60)  # answered once the worker is up

    def produce(self, work: list[tuple[int, int]], window: int, timeout_s: float) -> int:
        from celery.result import ResultSet  # type: ignore[import-untyped]

        results = [self._app.send_task(self._name, (x, y)) for x, y in work]
        return sum(ResultSet(results, app=self._app).join_native(timeout=timeout_s))

    def blocking_add(self, timeout_s: float) -> Call:
        app, name = self._app, self._name
        return lambda: app.send_task(name, (1, 2)).get(timeout=timeout_s)

    def close(self) -> None:
        self._app.close()


DRIVERS: dict[str, Callable[[str], Driver]] = {"zerotask": Zerotask, "raw": Raw, "celery": Celery}


def _say(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.flush()


def _throughput(driver: Driver, order: dict[str, Any]) -> None:
    window, timeout_s = order["window"], order["timeout_s"]
    driver.produce(pairs(order["warmup"]), window, timeout_s)
    started = time.perf_counter()
    total = driver.produce(pairs(order["count"]), window, timeout_s)
    seconds = time.perf_counter() - started
    _say({"seconds": seconds, "sum_ok": total == expected_sum(order["count"])})


def _latency(driver: Driver, order: dict[str, Any]) -> None:
    add = driver.blocking_add(order["timeout_s"])
    for _ in range(order["warmup"]):
        add()
    _say({"ready": True})
    if sys.stdin.readline().strip() != "go":
        return
    clock = time.perf_counter
    latencies, calls_ok = [], True
    for _ in range(order["calls"]):
        started = clock()
        calls_ok &= add() == 3
        latencies.append(clock() - started)
    _say({"latencies_s": latencies, "calls_ok": calls_ok})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description="The benchmark's client role (see the module).")
    parser.add_argument("kind", choices=sorted(DRIVERS))
    parser.add_argument("target", help="zerotask: the broker's endpoint; raw: the raw broker's frontend; celery: the Redis URL")
    options = parser.parse_args(argv)
    driver = DRIVERS[options.kind](options.target)
    try:
        for line in sys.stdin:
            order = orjson.loads(line)
            if order["op"] == "throughput":
                _throughput(driver, order)
            elif order["op"] == "latency":
                _latency(driver, order)
    finally:
        driver.close()


# ---- the benchmark's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    latencies_s: list[float]
    calls_ok: bool
    cpu_s: dict[str, float]  # CPU seconds each role used over the timed loop


class ClientProcess:
    """The benchmark's handle on a ``python -m bench.client`` process; :meth:`stop` ends it."""

    def __init__(self, kind: str, target: str, directory: Path, name: str, prefix: Sequence[str] = ()) -> None:
        """The client's log goes to ``directory``; ``prefix``: the command that runs ``-m bench.client``
        (``python -m`` by default; bench.instructions puts valgrind before it)."""
        args = [*(prefix or [sys.executable, "-m"]), "bench.client", kind, target]
        self.process = Process(args, log_path(directory, f"client-{name}"), pipes=True)
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def throughput(self, count: int, config: Config) -> tuple[float, bool]:
        """Seconds to run ``count`` add(x, y) after ``config.warmup`` untimed, and whether the sum was right."""
        order = {"op": "throughput", "count": count, "warmup": config.warmup, "window": config.window}
        answer = self._ask({**order, "timeout_s": config.timeout_s})
        return float(answer["seconds"]), bool(answer["sum_ok"])

    def latency(self, calls: int, config: Config, roles: Callable[[], cpu.Roles]) -> Latency:
        """Time ``calls`` blocking add(1, 2) one at a time, after ``config.warmup`` untimed. ``roles()``
        names the processes whose CPU counts (this client's is added as "client"); their counters are
        read after the warm-up and after the loop, while the client waits, never during the loop."""
        answer = self._ask({"op": "latency", "calls": calls, "warmup": config.warmup, "timeout_s": config.timeout_s})
        assert answer.get("ready"), answer
        processes = {"client": [self.pid], **roles()}
        before = cpu.snapshot(processes)
        answer = self._ask("go")
        after = cpu.snapshot(processes)
        return Latency(list(answer["latencies_s"]), bool(answer["calls_ok"]), cpu.used(before, after))

    def _ask(self, order: dict[str, Any] | str) -> dict[str, Any]:
        stdin = self.process.process.stdin
        assert stdin is not None
        stdin.write(order.encode() + b"\n" if isinstance(order, str) else orjson.dumps(order) + b"\n")
        stdin.flush()
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        """The next line the client writes; waits as long as it lives (it bounds every call it makes)."""
        stdout = self.process.process.stdout
        assert stdout is not None
        while b"\n" not in self._pending:
            ready = select.select([stdout], [], [], 1.0)[0]
            chunk = os.read(stdout.fileno(), 1 << 20) if ready else None
            if chunk:
                self._pending += chunk
            elif chunk == b"" or not self.process.alive():  # end of file, or it died
                raise RuntimeError(f"the client exited:\n{self.process.output()[-3000:]}")
        line, self._pending = self._pending.split(b"\n", 1)
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    def stop(self) -> None:
        self.process.stop()


if __name__ == "__main__":
    main()
