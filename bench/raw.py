"""The raw pyzmq ceiling: client DEALER -> broker ROUTER/ROUTER -> worker DEALER and back, orjson, no task system.

``python -m bench.raw broker FRONTEND BACKEND`` and ``python -m bench.raw worker BACKEND`` are the two
server processes; the benchmark process is the client. It is the guide's load-balancing broker with
credit: a worker says READY once per request it may be sent before it answers (a zerotask node grants
one per free worker; the benchmark gives each raw worker ``--raw-credit``, 100 by default), the broker
queues requests while no worker has credit, and passes replies straight back.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import Any

import orjson
import zmq

from bench.config import Config, expected_sum, pairs
from bench.procs import Process, log_path
from bench.stats import Run, percentile
from zerotask.testing import free_port

READY = b"READY"


def _router(context: zmq.Context[Any], endpoint: str) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an error, not a silent drop, if a peer is gone
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def broker_main(frontend_endpoint: str, backend_endpoint: str) -> None:
    context = zmq.Context()
    frontend = _router(context, frontend_endpoint)
    backend = _router(context, backend_endpoint)
    free: deque[bytes] = deque()  # one entry per idle worker
    waiting: deque[tuple[bytes, bytes]] = deque()  # (client, request) while no worker is free
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    while True:
        poller.poll()
        while True:
            try:
                worker, *rest = backend.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if rest != [READY]:
                frontend.send_multipart(rest)  # [client, reply]
            if waiting:
                backend.send_multipart([worker, *waiting.popleft()])
            else:
                free.append(worker)
        while True:
            try:
                client, request = frontend.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if free:
                backend.send_multipart([free.popleft(), client, request])
            else:
                waiting.append((client, request))


def worker_main(backend_endpoint: str, credit: int) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(backend_endpoint)
    for _ in range(credit):  # one READY per request it may be sent before it answers
        sock.send(READY)
    while True:
        client, payload = sock.recv_multipart()
        request = orjson.loads(payload)
        x, y = request["params"]
        sock.send_multipart([client, orjson.dumps({"id": request["id"], "result": x + y})])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description="The raw pyzmq ceiling's broker and worker.")
    commands = parser.add_subparsers(dest="command", required=True)
    broker = commands.add_parser("broker")
    broker.add_argument("frontend")
    broker.add_argument("backend")
    worker = commands.add_parser("worker")
    worker.add_argument("backend")
    worker.add_argument("--credit", type=int, default=1, help="requests it may be sent before it answers (default 1)")
    options = parser.parse_args(argv)
    try:
        if options.command == "broker":
            broker_main(options.frontend, options.backend)
        else:
            worker_main(options.backend, options.credit)
    except KeyboardInterrupt:
        pass


# ---- the client: the benchmark process ----------------------------------------------------------


def _pipeline(sock: zmq.Socket[Any], work: list[tuple[int, int]], window: int, timeout_s: float) -> int:
    """Send every add(x, y) with at most ``window`` in flight; return the sum of the results."""
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


def run(workers: int, config: Config) -> Run:
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    module = [sys.executable, "-m", "bench.raw"]
    processes: list[Process] = []
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        processes.append(Process([*module, "broker", frontend, backend], log_path(config.workdir, "raw-broker")))
        for index in range(workers):
            worker = [*module, "worker", backend, "--credit", str(config.raw_credit)]
            processes.append(Process(worker, log_path(config.workdir, f"raw-worker-{index}")))
        sock.connect(frontend)
        _pipeline(sock, [(0, 0)], 1, 30.0)  # answered once the broker and a worker are up
        _pipeline(sock, pairs(config.warmup), config.window, config.timeout_s)
        started = time.perf_counter()
        total = _pipeline(sock, pairs(config.tasks), config.window, config.timeout_s)
        seconds = time.perf_counter() - started
        latencies, calls_ok = [], True
        for _ in range(config.calls):
            started = time.perf_counter()
            calls_ok &= _pipeline(sock, [(1, 2)], 1, config.timeout_s) == 3
            latencies.append(time.perf_counter() - started)
        return Run(
            "raw", workers, config.tasks, seconds, total == expected_sum(config.tasks),
            percentile(latencies, 0.5), percentile(latencies, 0.99), calls_ok,
        )  # fmt: skip
    finally:
        sock.close(linger=0)
        for process in reversed(processes):
            process.stop()


if __name__ == "__main__":
    main()
