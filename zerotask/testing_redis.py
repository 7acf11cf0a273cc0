"""RedisServer: a real ``redis-server`` of a test's own, for what the shared one cannot show.

Tests of durability, outages and failover start their own server on a free port with its files in a
temporary directory, and kill, stop or restart it; the Redis on 127.0.0.1:6379 is never touched.
Sentinel too: :meth:`RedisServer.replica` and :class:`Sentinel` build a master, a replica and a sentinel
that fails over when told to.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from zerotask.testing import ManagedProcess, free_port, scaled, wait_until


def redis_available() -> str | None:
    """None if ``redis-server`` can be run here, else why not (for a skip message)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server; .ci/run does)"
    return None


class RedisServer:
    """``RedisServer(directory).start()``: a redis-server on 127.0.0.1 and a free port, keeping its files in
    ``directory``; with ``appendonly`` every write is in the append-only file before Redis answers it."""

    def __init__(self, directory: Path, appendonly: bool = True, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = port or free_port()
        self.process: ManagedProcess | None = None
        self._extra: list[str] = []
        self._starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (again, on the same port and files) and wait until it answers."""
        self._starts += 1
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
        log = self.directory / f"redis-{self.port}-{self._starts}.log"
        self.process = ManagedProcess([*args, *self._extra], log)
        wait_until(self.answers, 10, f"redis-server on port {self.port} to answer")
        return self

    def answers(self) -> bool:
        import redis  # the [redis] extra: only tests that need a server of their own import this

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            if self.process is not None and not self.process.alive():
                raise RuntimeError(f"redis-server exited:\n{self.process.output()}") from None
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would (what the append-only file holds survives)."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()

    def pause(self) -> None:
        """SIGSTOP: it stops answering without closing a connection, as a host cut off would."""
        if self.process is not None:
            self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.signal(signal.SIGCONT)

    def replica(self, directory: Path) -> RedisServer:
        """A replica of this server (not started)."""
        replica = RedisServer(directory, self.appendonly)
        replica._extra = ["--replicaof", "127.0.0.1", str(self.port)]
        return replica

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.stop()
            self.process = None


class Sentinel:
    """One redis-server in sentinel mode watching ``master`` as ``name`` (quorum 1: enough for a test)."""

    def __init__(self, directory: Path, master: RedisServer, name: str = "zerotask") -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        config = self.directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n"
        )
        self.process = ManagedProcess(["redis-server", str(config), "--sentinel"], self.directory / f"sentinel-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"

    def master_port(self) -> int:
        import redis

        host_port = redis.Redis(port=self.port, socket_timeout=1).sentinel_get_master_addr_by_name(self.name)
        assert isinstance(host_port, tuple | list), f"the sentinel does not know {self.name}"
        return int(host_port[1])

    def failover(self, timeout_s: float = 20.0) -> int:
        """Make the replica the master; returns the new master's port once the sentinel says so."""
        import redis

        before = self.master_port()
        deadline = time.monotonic() + scaled(timeout_s)
        while True:  # refused while the sentinel does not know the replica yet
            try:
                redis.Redis(port=self.port, socket_timeout=1).sentinel_failover(self.name)
                break
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return int(wait_until(lambda: (port := self.master_port()) != before and port, timeout_s, "the sentinel to fail over"))

    def stop(self) -> None:
        self.process.stop()
