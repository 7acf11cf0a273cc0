"""The raw pyzmq ceiling: client DEALER -> broker ROUTER/ROUTER -> worker DEALER and back, orjson, no task system.

Four hops and three roles, each a fresh process per run: ``python -m bench.raw broker FRONTEND BACKEND``,
``python -m bench.raw worker BACKEND`` (one per worker) and ``python -m bench.client raw FRONTEND``. It
is the guide's load-balancing broker with credit: a worker says READY once per request it may be sent
before it answers (a zerotask node grants one per free worker; the benchmark gives each raw worker
``--raw-credit``, 100 by default), the broker queues requests while no worker has credit, and passes
replies straight back. The client pipelines ``--window`` requests (1,000) for throughput, and sends
one at a time for latency.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from typing import Any

import orjson
import zmq

from bench.client import ClientProcess
from bench.config import Config
from bench.procs import Process, log_path
from bench.stats import Run
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


# ---- a run: every role a fresh process ------------------------------------------------------------


def run(workers: int, config: Config) -> Run:
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    module = [sys.executable, "-m", "bench.raw"]
    processes: list[Process] = []
    client: ClientProcess | None = None
    try:
        broker = Process([*module, "broker", frontend, backend], log_path(config.workdir, "raw-broker"))
        processes.append(broker)
        for index in range(workers):
            worker = [*module, "worker", backend, "--credit", str(config.raw_credit)]
            processes.append(Process(worker, log_path(config.workdir, f"raw-worker-{index}")))
        client = ClientProcess("raw", frontend, config.workdir, f"raw-w{workers}")  # answers once a worker is up
        seconds, sum_ok = client.throughput(config.tasks, config)
        roles = {"broker": [broker.pid], "workers": [process.pid for process in processes[1:]]}
        latency = client.latency(config.calls, config, lambda: roles)
    finally:
        if client is not None:
            client.stop()
        for process in reversed(processes):
            process.stop()
    return Run.of("raw", workers, config.tasks, seconds, sum_ok, latency.latencies_s, latency.calls_ok, latency.cpu_s)


if __name__ == "__main__":
    main()
