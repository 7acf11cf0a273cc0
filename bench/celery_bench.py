"""Celery's runners: a worker as a process (``python -m celery -A bench.celery_app worker``), the producer
a client process (``python -m bench.client celery URL``; this process for the scale run), Redis the broker
and the result backend, in a database of the benchmark's own."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.client import ClientProcess
from bench.config import REPO_ROOT, Config
from bench.procs import Process, drain, log_path, wait_for
from bench.stats import Run, ScaleRun

WORKER_OPTIONS = ["--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def pool_for(workers: int) -> str:
    return "solo" if workers == 1 else "prefork"


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


@contextmanager
def _worker(workers: int, config: Config, flush: bool = True) -> Iterator[Any]:
    """A flushed database (unless ``flush`` is false), a Celery worker on it, and a producer app;
    everything stopped, and the database flushed, afterwards."""
    from bench.celery_app import make_app

    assert config.redis_url is not None
    store = _redis(config.redis_url)
    if flush:
        store.flushdb()
    pool = pool_for(workers)
    args = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", pool, "--concurrency", str(workers)]
    args += [*WORKER_OPTIONS, "--hostname", f"bench-{uuid.uuid4().hex[:8]}@%h"]
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, BENCH_CELERY_URL=config.redis_url, PYTHONPATH=pythonpath)
    app = make_app(config.redis_url)
    worker: Process | None = None
    try:
        worker = Process(args, log_path(config.workdir, f"celery-{pool}-{workers}"), cwd=REPO_ROOT, env=env)
        yield app
    except Exception:
        if worker is not None:
            print(f"---- {worker.log_path} (last lines)\n{''.join(worker.output().splitlines(True)[-20:])}", file=sys.stderr)
        raise
    finally:
        app.close()
        if worker is not None:
            worker.stop()
        store.flushdb()
        store.close()


def run(workers: int, config: Config) -> Run:
    """Throughput and latency from a client process of its own. Celery's CPU is not measured: its broker
    is a Redis server that other programs may be using too."""
    assert config.redis_url is not None
    with _worker(workers, config):
        client = ClientProcess("celery", config.redis_url, config.workdir, f"celery-{pool_for(workers)}-{workers}")
        try:
            seconds, sum_ok = client.throughput(config.celery_tasks, config)
            latency = client.latency(config.calls, config, lambda: {})
        finally:
            client.stop()
    name = f"celery-{pool_for(workers)}"
    return Run.of(name, workers, config.celery_tasks, seconds, sum_ok, latency.latencies_s, latency.calls_ok, None)


def scale(workers: int, count: int, config: Config) -> ScaleRun:
    """Queue ``count`` tasks before the worker starts, then time the drain. The worker is started by
    hand here (not by _worker) so that nothing consumes while the queue fills."""
    from bench.celery_app import ADD, QUEUE, make_app

    assert config.redis_url is not None
    store = _redis(config.redis_url)
    store.flushdb()
    app = make_app(config.redis_url)
    try:
        before = int(store.info("memory")["used_memory"])
        every = max(1, count // 100)
        sample: list[tuple[int, str]] = []
        started = time.perf_counter()
        for i in range(count):
            result = app.send_task(ADD, (i, i))
            if i % every == 0 or i == count - 1:
                sample.append((i, result.id))
        queue_seconds = time.perf_counter() - started
        holding = int(store.info("memory")["used_memory"])
    except BaseException:
        store.flushdb()
        raise
    finally:
        app.close()
    try:
        with _worker(workers, config, flush=False) as app:
            wait_for(lambda: store.llen(QUEUE) < count, 120, "the Celery worker to take its first task")
            drained, drain_seconds = drain(lambda: (store.llen(QUEUE), store.hlen("unacked")), count, config.drain_s)
            after = int(store.info("memory")["used_memory"])
            finished = [(i, app.AsyncResult(task_id)) for i, task_id in sample]
            finished = [(i, result) for i, result in finished if result.ready()]
            sample_ok = bool(finished) and all(result.get(timeout=config.timeout_s) == 2 * i for i, result in finished)
    finally:
        store.close()
    return ScaleRun(
        f"celery-{pool_for(workers)}", workers, count, queue_seconds,
        "Redis used_memory (the whole server): before, with every task queued, at the end (results included)",
        before, holding, after, drained, drain_seconds, sample_ok,
    )  # fmt: skip
