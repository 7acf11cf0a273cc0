"""zerotask's runners: brokers and nodes as processes (:class:`Processes`), and a client process.

A system is one or more brokers on one ``--store`` spec, each with a node of its own; the client talks
to the first broker. :class:`Processes` starts them with a command prefix of the caller's choosing,
which is how ``python -m bench.trace`` runs the same processes with its probes installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import zmq

from bench import cpu
from bench.client import ClientProcess
from bench.config import Config, System
from bench.procs import Process, drain, log_path, memory_kib, wait_for
from bench.stats import Run, ScaleRun
from zerotask.client import Client
from zerotask.testing import free_port

TASKS_MODULE = "bench.tasks"
CLIENT_KIND = "AsyncClient, every task submitted before the first result is awaited"


class Processes:
    """zerotask brokers and nodes, each a process in a session of its own; :meth:`stop` ends them all.
    ``prefix(role)`` is the command that runs a module for ``role`` ("broker", "node"): by default
    ``python -m``."""

    def __init__(self, directory: Path, prefix: Any = None) -> None:
        self.directory = directory
        self._prefix = prefix or (lambda role: [sys.executable, "-m"])
        self.brokers: list[tuple[str, Process]] = []  # (endpoint, process)
        self.nodes: list[Process] = []

    def start_broker(self, store: str, wait: bool = True) -> str:
        """A broker on ``store`` (a --store spec); returns its endpoint."""
        endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        args = [*self._prefix("broker"), "zerotask.broker", "--bind", endpoint, "--publish", publish, "--store", store]
        process = Process(args, log_path(self.directory, "broker"), leader_first=True)
        self.brokers.append((endpoint, process))
        if wait:
            wait_for(lambda: self._answers(endpoint, process), 20, "the broker to answer", interval_s=0.05)
        return endpoint

    def start_node(self, endpoint: str, workers: int, wait: bool = True) -> Process:
        """A node of ``workers`` worker processes serving bench.tasks on the broker at ``endpoint``."""
        before = len(info(endpoint)["nodes"]) if wait else 0
        args = [*self._prefix("node"), "zerotask.node", TASKS_MODULE, "--broker", endpoint, "--workers", str(workers)]
        node = Process(args, log_path(self.directory, "node"), leader_first=True)
        self.nodes.append(node)
        if wait:

            def connected() -> bool:
                if not node.alive():
                    raise RuntimeError(f"the node exited:\n{node.output()[-3000:]}")
                return len(info(endpoint)["nodes"]) > before

            wait_for(connected, 30, "the node to connect", interval_s=0.05)
        return node

    @staticmethod
    def _answers(endpoint: str, broker: Process) -> bool:
        if not broker.alive():
            raise RuntimeError(f"the broker exited:\n{broker.output()[-3000:]}")
        try:
            info(endpoint, timeout_s=0.5)
        except TimeoutError:
            return False
        return True

    def roles(self) -> cpu.Roles:
        """The processes by role, a node's workers found as its descendants (read now: call it outside
        any timed window)."""
        nodes = [node.pid for node in self.nodes]
        return {"broker": [process.pid for _, process in self.brokers], "node": nodes, "workers": cpu.descendants(nodes)}

    def logs(self) -> str:
        """The last lines of every log, for a run that went wrong."""
        processes = [process for _, process in self.brokers] + self.nodes
        return "".join(f"---- {p.log_path} (last lines)\n{''.join(p.output().splitlines(True)[-20:])}" for p in processes)

    def stop(self) -> None:
        for node in self.nodes:  # first, so that each says goodbye to a broker still there
            node.stop()
        for _, broker in self.brokers:
            broker.stop()


def info(endpoint: str, timeout_s: float = 10.0) -> dict[str, Any]:
    with Client(endpoint, timeout=timeout_s) as client:
        return client.info()


def store_spec(system: System, directory: Path, redis_server: str | None) -> str:
    """The brokers' --store for a run: "sqlite" is a fresh file in the run's directory; ``{redis}`` in a
    spec is the Redis the benchmark uses, ``redis_server`` (redis://host:port)."""
    if system.store == "sqlite":
        return str(directory / "bench.db")
    if "{redis}" in system.store:
        if redis_server is None:
            raise RuntimeError(f"{system.name} needs a Redis and the benchmark has none")
        return system.store.replace("{redis}", redis_server)
    return system.store


def _redis_server(config: Config) -> str | None:
    """redis://host:port of the benchmark's Redis (config.redis_url names Celery's database too)."""
    return config.redis_url.rsplit("/", 1)[0] if config.redis_url else None


def flush_store(store: str) -> None:
    """Empty the store if it is a Redis database, so that no run starts on another's leftovers."""
    if store.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(store)
        try:
            client.flushdb()
        finally:
            client.close()


_runs = 0


@contextmanager
def _session(system: System, config: Config, name: str) -> Iterator[tuple[Processes, str]]:
    """Processes (their logs kept in the work directory, and shown if anything goes wrong) and the run's
    --store, empty before and after the run: a fresh SQLite file (deleted), a flushed Redis database."""
    global _runs
    _runs += 1
    directory = config.workdir / f"zerotask-{_runs:03d}-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    store = store_spec(system, directory, _redis_server(config))
    processes = Processes(directory)
    flush_store(store)
    try:
        yield processes, store
    except Exception:
        print(processes.logs(), file=sys.stderr)
        raise
    finally:
        processes.stop()
        flush_store(store)
        for leftover in directory.glob("bench.db*"):  # the SQLite file and its WAL: logs are all we keep
            leftover.unlink()


def start(system: System, workers: int, processes: Processes, store: str) -> str:
    """The system's brokers on ``store``, each with a node; returns the first broker's endpoint."""
    endpoints = [processes.start_broker(store) for _ in range(system.brokers)]
    for endpoint in endpoints:
        processes.start_node(endpoint, workers)
    return endpoints[0]


def run(system: System, workers: int, config: Config) -> Run:
    name = f"{system.name}-w{workers}"
    with _session(system, config, name) as (processes, store):
        endpoint = start(system, workers, processes, store)
        client = ClientProcess("zerotask", endpoint, processes.directory, name)
        try:
            seconds, sum_ok = client.throughput(config.tasks, config)
            latency = client.latency(config.calls, config, processes.roles)
        finally:
            client.stop()
    return Run.of(system.name, workers, config.tasks, seconds, sum_ok, latency.latencies_s, latency.calls_ok, latency.cpu_s)


def queue(endpoint: str, count: int, window: int, timeout_s: float) -> list[tuple[int, str]]:
    """Submit add(i, i) for i < count over one DEALER, ``window`` requests in flight (JSON-RPC, no client
    library); returns (i, task id) for about a hundred of them, the last one included."""
    every = max(1, count // 100)
    sample: list[tuple[int, str]] = []
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                params = {"method": "add", "args": [sent, sent]}
                sock.send(orjson.dumps({"jsonrpc": "2.0", "method": "zerotask.broker.submit", "params": params, "id": sent}))
                sent += 1
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"the broker did not acknowledge within {timeout_s} s ({received} of {count})")
            while received < sent:
                try:
                    reply: dict[str, Any] = orjson.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if "result" not in reply:
                    raise RuntimeError(f"the broker refused a task: {reply}")
                received += 1
                if reply["id"] % every == 0 or reply["id"] == count - 1:
                    sample.append((reply["id"], reply["result"]))
    finally:
        sock.close(linger=0)
    return sorted(sample)


def scale(system: System, workers: int, count: int, config: Config) -> ScaleRun:
    with _session(system, config, f"scale-{system.name}") as (processes, store):
        endpoint = processes.start_broker(store)
        broker = processes.brokers[0][1]
        client = Client(endpoint, timeout=config.timeout_s)
        try:
            before = memory_kib(broker.pid, "VmRSS") * 1024
            started = time.perf_counter()
            sample = queue(endpoint, count, config.window, config.timeout_s)
            queue_seconds = time.perf_counter() - started
            holding = memory_kib(broker.pid, "VmHWM") * 1024

            def left() -> tuple[int, int]:
                described = client.info()
                return described["queued"].get("add", 0), sum(node["tasks"] for node in described["nodes"])

            processes.start_node(endpoint, workers, wait=False)
            wait_for(lambda: left()[0] < count, 60, "the node to take its first task")
            drained, drain_seconds = drain(left, count, config.drain_s)
            after = memory_kib(broker.pid, "VmRSS") * 1024
            finished = [(i, task_id) for i, task_id in sample if client.status(task_id) == "FINISHED"]
            right = all(client.result(task_id, timeout=config.timeout_s) == 2 * i for i, task_id in finished)
            sample_ok = bool(finished) and right
        finally:
            client.close()
    return ScaleRun(
        system.name, workers, count, queue_seconds,
        "the broker process: VmRSS idle, VmHWM (peak RSS) once every task is queued, VmRSS at the end",
        before, holding, after, drained, drain_seconds, sample_ok,
    )  # fmt: skip
