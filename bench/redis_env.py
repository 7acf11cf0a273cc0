"""Finding a Redis for Celery: the one on 127.0.0.1:6379 if it answers, else a private redis-server, else none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Process, log_path, wait_for
from zerotask.testing import free_port

DEFAULT = "redis://127.0.0.1:6379"


@dataclass(frozen=True, slots=True)
class RedisChoice:
    url: str | None  # redis://host:port (no database), None when there is no Redis to use
    note: str  # what was chosen, or why Celery is left out
    version: str = ""


def celery_missing() -> str | None:
    """Why Celery cannot run here, or None if it can."""
    try:
        import celery  # type: ignore[import-untyped]  # noqa: F401
        import redis  # noqa: F401
    except ImportError as error:
        return f"Celery left out: {error.name} is not installed (pip install -e '.[bench]')"
    return None


def _version(url: str) -> str | None:
    """The server's version if a Redis answers at ``url``, else None."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return None


@contextmanager
def redis_for_celery(workdir: Path, private: bool = False) -> Iterator[RedisChoice]:
    """Yield the Redis Celery should use: the one on 127.0.0.1:6379 if it answers (unless ``private``),
    else a redis-server started here on a free port, stopped on the way out."""
    missing = celery_missing()
    if missing is not None:
        yield RedisChoice(None, missing)
        return
    executable = shutil.which("redis-server")
    version = None if private and executable else _version(DEFAULT)
    if version is not None:
        yield RedisChoice(DEFAULT, "Redis: the server on 127.0.0.1:6379", version)
        return
    if executable is None:
        yield RedisChoice(None, "Celery left out: no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
        return
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = Process(args, log_path(workdir, "redis-server"))
    try:
        wait_for(lambda: _version(url) is not None, 20, "redis-server to answer", interval_s=0.1)
        yield RedisChoice(url, f"Redis: a redis-server started for the benchmark on port {port}", _version(url) or "")
    finally:
        server.stop()
