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
from typing import Any

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


class RedisCluster:
    """A Redis Cluster of ``masters`` redis-servers (no replicas), every slot assigned, for the
    ``redis+cluster://`` store; :meth:`move_slot` migrates one slot to another master, as a resharding
    does, so that a client's next command there gets MOVED."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.servers = [
            RedisServer(directory / f"node{index}", appendonly=False, port=_cluster_port()) for index in range(masters)
        ]
        for server in self.servers:
            server._extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{server.port}.conf"]
            server._extra += ["--cluster-node-timeout", "2000"]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{server.port}" for server in self.servers)

    def start(self) -> RedisCluster:
        import subprocess

        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        command = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(command, check=True, capture_output=True, timeout=scaled(30))
        wait_until(lambda: all(self._client(server).cluster("info")["cluster_state"] == "ok" for server in self.servers),
                   30, "the cluster to be ok")  # fmt: skip
        return self

    def _client(self, server: RedisServer) -> Any:  # a redis.Redis (the [redis] extra: imported only here)
        import redis

        return redis.Redis(port=server.port, socket_timeout=scaled(5))

    def master_of(self, slot: int) -> RedisServer:
        for start, end, master, *_ in self._client(self.servers[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(server for server in self.servers if server.port == int(master[1]))
        raise LookupError(f"no master holds slot {slot}")

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """Migrate ``slot`` and its keys to ``to``, then tell every master (the resharding steps)."""
        source = self.master_of(slot)
        if source is to:
            return
        ids = {server.port: self._client(server).execute_command("CLUSTER", "MYID").decode() for server in self.servers}
        self._client(to).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        self._client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to.port])
        while keys := self._client(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            self._client(source).execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
        for server in self.servers:
            self._client(server).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to.port])

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _cluster_port() -> int:
    """A free port a cluster node can have: its cluster bus listens 10,000 higher, which must be free too."""
    import socket

    for _ in range(100):
        port = free_port()
        if port <= 55535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port with a free cluster bus port 10,000 above it")
