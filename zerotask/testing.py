"""Helpers for tests, demos and benchmarks: real processes, and a manual clock for the broker's core.

``Cluster`` starts ``python -m zerotask.broker`` and ``python -m zerotask.node`` as child processes on a
free TCP port, waits until they answer, and stops every process it started (SIGTERM, then SIGKILL).
``ManualClock`` is a scheduler whose time moves only when told, so the core's retries and timeouts are
tested in-process without sleeping. Nothing here is imported by the broker, node or client.

``Cluster(curve=True)`` runs CURVE: :class:`ClusterKeys` makes certificates for the broker and for the keys
``client``, ``client2`` (clients), ``node`` and ``admin``; nodes get the node key, ``cluster.client()``
the client key (``cluster.client(key="client2")`` another). ZEROTASK_TEST_CURVE=DIR makes every Cluster
a CURVE one, its keys in DIR (point ZEROTASK_CURVE_SECRET and ZEROTASK_BROKER_KEY there for the clients a
test makes itself: DIR/clients/client.key_secret, DIR/broker.key).
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypedDict

from zerotask.auth import create_keys
from zerotask.client import Client
from zerotask.loop import Callback, Timer

TIMEOUT_SCALE = float(os.environ.get("ZEROTASK_TEST_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    """``seconds`` times ZEROTASK_TEST_TIMEOUT_SCALE, for slow machines."""
    return seconds * TIMEOUT_SCALE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError after ``timeout_s`` (scaled)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {scaled(timeout_s):.1f} s waiting for {what}")
        time.sleep(0.02)


class ManualClock:
    """A :class:`zerotask.loop.Scheduler` for in-process tests: ``call_later`` only records the callback,
    and :meth:`advance` moves time on, running what falls due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[Timer] = []
        self._sequence = itertools.count()

    def call_later(self, delay_s: float, callback: Callback) -> Timer:
        timer = Timer(self.now + delay_s, next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, running every timer that falls due (timers they add included)."""
        until = self.now + seconds
        while self._timers and self._timers[0].when <= until:
            timer = heapq.heappop(self._timers)
            self.now = timer.when
            if not timer.cancelled:
                timer.callback()
        self.now = until

    @property
    def pending(self) -> int:
        """Timers not yet run or cancelled."""
        return sum(1 for timer in self._timers if not timer.cancelled)


class ManagedProcess:
    """A child process whose output goes to a log file, stopped for sure by :meth:`stop`."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: the process gets no chance to clean up."""
        self.signal(signal.SIGKILL)
        self.process.wait(scaled(10))

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``. Returns the exit code."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(scaled(timeout_s))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(scaled(timeout_s))
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class PeerKeys(TypedDict, total=False):
    """Keyword arguments that give a Client, AsyncClient or Node its CURVE keys."""

    curve_secret: str
    broker_key: str


class ClusterKeys:
    """CURVE certificates for a test cluster, in ``directory`` (made if missing, reused if there): the
    broker's, and one key per name in :attr:`ROLES`, in that role's directory."""

    ROLES = {"client": "clients", "client2": "clients", "node": "nodes", "admin": "admins"}

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for name, folder in [("broker", "."), *self.ROLES.items()]:
            if not (directory / folder / f"{name}.key_secret").exists():
                try:
                    create_keys(directory / folder, name)
                except FileExistsError:
                    pass  # another cluster sharing the directory made it meanwhile

    def secret(self, name: str) -> str:
        """The secret certificate of ``name`` (a key of ROLES, or "broker")."""
        folder = "." if name == "broker" else self.ROLES[name]
        return str(self.directory / folder / f"{name}.key_secret")

    @property
    def broker_key(self) -> str:
        return str(self.directory / "broker.key")

    def broker_args(self) -> list[str]:
        folders = {f"--{folder}": str(self.directory / folder) for folder in self.ROLES.values()}
        return ["--curve-secret", self.secret("broker"), *[item for pair in folders.items() for item in pair]]

    def peer_args(self, name: str) -> list[str]:
        return ["--curve-secret", self.secret(name), "--broker-key", self.broker_key]

    def peer(self, name: str) -> PeerKeys:
        """Keyword arguments for Client, AsyncClient or Node."""
        return {"curve_secret": self.secret(name), "broker_key": self.broker_key}


class Cluster:
    """A broker and any number of nodes, as processes; a context manager that stops them all. With
    ``curve`` (default: whether ZEROTASK_TEST_CURVE is set) everything runs CURVE, keys in :attr:`keys`."""

    def __init__(
        self,
        store: str = "memory",
        directory: Path | None = None,
        broker_args: list[str] | None = None,
        curve: bool | None = None,
    ) -> None:
        self._tempdir = None if directory is not None else tempfile.TemporaryDirectory(prefix="zerotask-")
        self.directory = directory if directory is not None else Path(self._tempdir.name)  # type: ignore[union-attr]
        shared_keys = os.environ.get("ZEROTASK_TEST_CURVE")
        if curve is None:
            curve = bool(shared_keys)
        self.keys = ClusterKeys(Path(shared_keys) if shared_keys else self.directory / "keys") if curve else None
        self.store = store if store == "memory" or "://" in store else str(self.directory / store)  # a path, or a URL
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.publish = f"tcp://127.0.0.1:{free_port()}"
        self.broker_args = broker_args or []
        self.broker: ManagedProcess | None = None
        self.nodes: list[ManagedProcess] = []
        self._clients: list[Client] = []
        self._count = 0

    def _log(self, name: str) -> Path:
        self._count += 1
        return self.directory / f"{self._count:02d}-{name}.log"

    def start_broker(self, *extra: str, wait: bool = True) -> ManagedProcess:
        args = [
            sys.executable,
            "-m",
            "zerotask.broker",
            "--bind",
            self.endpoint,
            "--publish",
            self.publish,
            "--store",
            self.store,
        ]
        keys = self.keys.broker_args() if self.keys is not None else []
        self.broker = ManagedProcess([*args, *keys, *self.broker_args, *extra], self._log("broker"))
        if wait:
            self.wait_for_broker()
        return self.broker

    def wait_for_broker(self, timeout_s: float = 20.0) -> None:
        probe = Client(self.endpoint, timeout=0.5, **self.peer("admin"))
        try:

            def answers() -> bool:
                assert self.broker is not None
                if not self.broker.alive():
                    raise RuntimeError(f"the broker exited:\n{self.broker.output()}")
                try:
                    probe.info()
                    return True
                except TimeoutError:
                    probe.close()  # a fresh socket for the next try: the old one holds a stale request
                    return False

            wait_until(answers, timeout_s, "the broker to answer")
        finally:
            probe.close()

    def start_node(self, *modules: str, workers: int = 1, extra: list[str] | None = None, wait: bool = True) -> ManagedProcess:
        before = len(self.info()["nodes"]) if wait else 0
        args = [sys.executable, "-m", "zerotask.node", *modules, "--broker", self.endpoint, "--workers", str(workers)]
        if self.keys is not None:
            args += self.keys.peer_args("node")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]))
        node = ManagedProcess([*args, *(extra or [])], self._log("node"), env=env)
        self.nodes.append(node)
        if wait:
            self.wait_for_nodes(before + 1, node)
        return node

    def wait_for_nodes(self, count: int, node: ManagedProcess | None = None, timeout_s: float = 30.0) -> None:
        def connected() -> bool:
            if node is not None and not node.alive():
                raise RuntimeError(f"the node exited:\n{node.output()}")
            return len(self.info()["nodes"]) >= count

        wait_until(connected, timeout_s, f"{count} node(s) to connect")

    def info(self) -> dict[str, Any]:
        with Client(self.endpoint, timeout=scaled(10), **self.peer("admin")) as client:
            return client.info()

    def peer(self, name: str) -> PeerKeys:
        """Keyword arguments that give a Client, AsyncClient or Node the key ``name`` (none without CURVE)."""
        return self.keys.peer(name) if self.keys is not None else {}

    def client(self, timeout_s: float = 30.0, key: str = "client") -> Client:
        """A Client (closed when the cluster stops); with CURVE, with the key ``key``."""
        client = Client(self.endpoint, timeout=scaled(timeout_s), **self.peer(key))
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        for node in self.nodes:
            node.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
