"""Opening a Redis store: the specs open_store takes (a sentinel-named master too), and what happens
without redis-py installed."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_helpers import REDIS_URL, RedisServer
from zerotask.store import TaskRecord, open_store
from zerotask.testing import free_port, scaled
from zerotask.wire import QUEUED

redis = pytest.importorskip("redis")
from zerotask.store.redis import RedisStore  # noqa: E402 - only once redis-py is known to be there


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, killed afterwards."""
    made = RedisServer(tmp_path)
    made.start()
    yield made
    made.kill()


def test_open_store_follows_the_master_a_sentinel_names(server: RedisServer, tmp_path: Path) -> None:
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {server.port} 1\n"
        "sentinel down-after-milliseconds main 60000\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + scaled(10)
        with redis.Redis(port=sentinel_port, socket_connect_timeout=1) as probe:
            while True:
                try:
                    if probe.execute_command("SENTINEL", "get-master-addr-by-name", "main"):
                        break
                except redis.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "the sentinel did not start"
                time.sleep(0.05)
        store = open_store(f"redis+sentinel://127.0.0.1:{sentinel_port}/main/0")
        try:
            assert isinstance(store, RedisStore)
            assert store.add(TaskRecord("t1", "a")) and store.flush() == []
            record = store.get("t1")
            assert record is not None and record.state == QUEUED
        finally:
            store.close()
        with redis.Redis(port=server.port) as direct:
            assert direct.hexists("zt:{default}:task", "t1")
    finally:
        sentinel.kill()
        sentinel.wait(scaled(10))


def test_open_store_makes_a_redis_store_from_a_url() -> None:
    store = open_store(REDIS_URL)
    try:
        assert isinstance(store, RedisStore) and store.shared
        assert (store.prefix, store.queue) == ("zt", "default")
    finally:
        store.close()


def test_without_redis_py_the_package_imports_and_a_redis_spec_says_what_to_install() -> None:
    child = (
        "import sys; sys.modules['redis'] = None\n"  # as if redis-py were not installed
        "from zerotask.store import open_store\n"
        "open_store('memory')\n"
        "try:\n    open_store('redis://127.0.0.1:6379/0')\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 0, done.stderr
    assert "pip install 'zerotask[redis]'" in done.stdout


def test_a_queue_name_with_braces_is_refused() -> None:
    with pytest.raises(ValueError):
        RedisStore(REDIS_URL, prefix=f"zt-test-{uuid.uuid4().hex}", queue="a}b")
