"""Redis for the store tests: the shared Redis at ZEROTASK_TEST_REDIS (default redis://127.0.0.1:6379/0)
with a prefix of its own per store, every key of which is deleted afterwards; and redis-server processes
that a test starts, stops and kills itself."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from zerotask.store import Store
from zerotask.testing import free_port, scaled
from zerotask.testing_redis import RedisCluster, redis_available

if TYPE_CHECKING:
    from zerotask.store.redis import RedisStore

REDIS_URL = os.environ.get("ZEROTASK_TEST_REDIS", "redis://127.0.0.1:6379/0")


@functools.cache
def _unreachable() -> str | None:
    """Why the shared Redis cannot be used, or None."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[redis]')"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
    except redis.RedisError as error:
        return f"Redis is not reachable at {REDIS_URL} (set ZEROTASK_TEST_REDIS): {error}"
    return None


def redis_store(directory: Path) -> Store:
    """A RedisStore on the shared Redis under a fresh ``zt-test-<uuid>`` prefix; skips the test when
    that Redis is not reachable."""
    reason = _unreachable()
    if reason is not None:
        pytest.skip(reason)
    from zerotask.store.redis import RedisStore

    return RedisStore(REDIS_URL, prefix=f"zt-test-{uuid.uuid4().hex}")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one prefix of the shared Redis: brokers A and B (a test module imports this fixture
    by name)."""
    from zerotask.store.redis import RedisStore

    first = redis_store(tmp_path)
    assert isinstance(first, RedisStore)
    second = RedisStore(REDIS_URL, prefix=first.prefix)
    yield first, second
    for store in (first, second):
        store.close()
    forget(first)


def bounded_modules() -> list[ModuleType]:
    """The modules of the Redis store that read base.py's bounds (MAX_REMEMBERED_METHODS...) when called,
    for a test to lower them; none without redis-py."""
    try:
        from zerotask.store import redis, redis_registry
    except ImportError:
        return []
    return [redis, redis_registry]


def forget(store: Store, url: str = REDIS_URL) -> None:
    """Delete every key under a test RedisStore's prefix (found with SCAN, never KEYS); nothing for other stores."""
    if type(store).__name__ != "RedisStore" or _unreachable() is not None:
        return
    import redis

    prefix = getattr(store, "prefix", "")
    assert prefix.startswith("zt-test-"), f"not a test prefix: {prefix!r}"
    with redis.Redis.from_url(url, socket_timeout=scaled(5)) as client:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)


class RedisServer:
    """A redis-server of a test's own on a free port, its data in ``directory`` (append-only file,
    no snapshots), so that it can be killed and started again on the same data."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--appendonly", "yes", "--save", "", "--protected-mode", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + scaled(10)
        with redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass  # still reading its append-only file
                except redis.ConnectionError:
                    assert self.process.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not answer in time"
                time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL: no chance to write anything more) and wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(scaled(10))
        self.process = None


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster (3 masters of the test's own) for the whole session; skipped without redis-server."""
    no_cli = None if shutil.which("redis-cli") else "redis-cli is not installed (apt-get install -y redis-tools)"
    reason = redis_available() or no_cli
    if reason is not None:
        pytest.skip(reason)
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def cluster_store(cluster: RedisCluster) -> Store:
    """A RedisStore on ``cluster`` under a fresh test prefix and a queue (hash tag) of its own."""
    from zerotask.store.redis import RedisStore

    return RedisStore(cluster.url, prefix=f"zt-test-{uuid.uuid4().hex}", queue=uuid.uuid4().hex[:8])
