"""``python -m bench``: run every system, interleaved, and print (and append to BENCHMARKS.md) one report."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench import report
from bench.config import BY_NAME, REPO_ROOT, SYSTEMS, Config, System
from bench.cpu import TICKS_PER_S
from bench.redis_env import RedisChoice, redis_for_celery
from bench.stats import Run, ScaleRun

NAMES = tuple(system.name for system in SYSTEMS)


def _list(kind: type, choices: tuple[str, ...] = ()) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
        unknown = [value for value in values if choices and value not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices) or kind.__name__}")
        return values

    return parse


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add = made.add_argument
    # 10,000 tasks took zerotask 0.2-0.3 s, and rows of that length moved by a third from one repetition to the next.
    add("--tasks", type=int, default=50_000, help="throughput: add(x, y) tasks per run (default 50000)")
    add("--celery-tasks", type=int, default=10_000, help="throughput: the same for Celery (default 10000)")
    add("--calls", type=int, default=1_000, help="latency: sequential blocking add(1, 2) calls per run (default 1000)")
    add(
        "--scale",
        type=int,
        default=1_000_000,
        help="scale: tasks queued for zerotask with no node running (default 1000000; 0: none)",
    )
    add("--celery-scale", type=int, default=20_000, help="scale: tasks queued for Celery (default 20000; 0: none)")
    add("--scale-workers", type=int, default=2, help="scale: worker processes of the node that drains (default 2)")
    add("--drain-seconds", type=float, default=120.0, help="scale: the longest a drain is watched (default 120)")
    add("--repeat", type=int, default=3, help="repetitions of every throughput and latency run (default 3)")
    add("--scale-repeat", type=int, default=1, help="repetitions of the scale runs (default 1)")
    add("--systems", type=_list(str, NAMES), default=list(NAMES), help=f"comma-separated, of {','.join(NAMES)}")
    add("--workers", type=_list(int), default=[1, 2], help="worker processes per node, comma-separated (default 1,2)")
    add("--warmup", type=int, default=200, help="tasks through each system before timing (default 200)")
    add("--window", type=int, default=1_000, help="requests in flight for the raw and queueing clients (default 1000)")
    add("--raw-credit", type=int, default=100, help="requests a raw-ceiling worker takes ahead (default 100)")
    add("--timeout", type=float, default=120.0, help="the longest wait for any one answer, seconds (default 120)")
    add("--redis-db", type=int, default=13, help="the Redis database Celery gets, flushed before each run (default 13)")
    add("--private-redis", action="store_true", help="start a redis-server of its own even if 127.0.0.1:6379 answers")
    add("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="where the report is appended")
    add("--no-write", action="store_true", help="print the report only")
    add("--keep-logs", action="store_true", help="keep the processes' logs (the directory is printed)")
    return made


def plan(systems: list[System], workers: list[int]) -> list[tuple[System, int]]:
    """(system, workers) in run order: each system at the worker counts it takes (Celery's pool follows
    the concurrency: solo for 1, prefork above)."""
    return [(system, count) for system in systems for count in workers if system.takes(count)]


def run_one(system: System, workers: int, config: Config) -> Run:
    if system.kind == "zerotask":
        from bench import zt

        return zt.run(system, workers, config)
    if system.kind == "raw":
        from bench import raw

        return raw.run(workers, config)
    from bench import celery_bench

    return celery_bench.run(workers, config)


def scale_one(system: System, workers: int, count: int, config: Config) -> ScaleRun:
    if system.kind == "zerotask":
        from bench import zt

        return zt.scale(system, workers, count, config)
    from bench import celery_bench

    return celery_bench.scale(workers, count, config)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: unwind through every finally, which stops each process started. Further
    signals are ignored so that they cannot cut that cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    for name in ("tasks", "celery_tasks", "calls", "repeat", "scale_workers", "window", "raw_credit"):
        if getattr(options, name) < 1:
            parser().error(f"--{name.replace('_', '-')} must be at least 1")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    # Nodes and Celery workers import bench.tasks / bench.celery_app wherever the benchmark is started from.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    workdir = Path(tempfile.mkdtemp(prefix="zerotask-bench-"))
    began = time.monotonic()
    try:
        wants_redis = any(BY_NAME[name].needs_redis for name in options.systems)
        finding = (
            redis_for_celery(workdir, options.private_redis)
            if wants_redis
            else nullcontext(RedisChoice(None, "Celery not selected"))
        )
        with finding as redis:
            return _run(options, workdir, redis, began)
    except KeyboardInterrupt:
        _say("interrupted: every process the benchmark started has been stopped")
        return 130
    finally:
        if options.keep_logs:
            _say(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(options: argparse.Namespace, workdir: Path, redis: RedisChoice, began: float) -> int:
    from bench import zt

    config = Config(
        tasks=options.tasks,
        celery_tasks=options.celery_tasks,
        calls=options.calls,
        warmup=options.warmup,
        window=options.window,
        raw_credit=options.raw_credit,
        drain_s=options.drain_seconds,
        timeout_s=options.timeout,
        workdir=workdir,
        redis_url=f"{redis.url}/{options.redis_db}" if redis.url else None,
    )
    systems = [BY_NAME[name] for name in options.systems if redis.url or not BY_NAME[name].needs_redis]
    facts = report.machine_facts(redis.version)
    fingerprint = report.source_fingerprint()
    _say("\n".join(facts))
    runs: list[Run] = []
    steps = plan(systems, options.workers)
    for repetition in range(options.repeat):
        for system, workers in steps:
            _say(f"[{repetition + 1}/{options.repeat}] {system.name}, {workers} worker(s) ...")
            run = run_one(system, workers, config)
            runs.append(run)
            per_call = run.cpu_per_call_s
            cpu = f", CPU {per_call * 1e6:,.0f} µs/call" if per_call is not None else ""
            _say(f"    {run.rate:,.0f} tasks/s, p50 {run.p50_s * 1000:.2f} ms, p99 {run.p99_s * 1000:.2f} ms{cpu}")

    def scale_count(system: System) -> int:
        return int(options.celery_scale if system.kind == "celery" else options.scale)

    scale_systems = [s for s in systems if s.scale and s.takes(options.scale_workers) and scale_count(s) > 0]
    scale_runs: list[ScaleRun] = []
    for repetition in range(options.scale_repeat):
        for system in scale_systems:
            count = scale_count(system)
            _say(f"[scale {repetition + 1}/{options.scale_repeat}] {system.name}: {count:,} tasks queued, then drained ...")
            scale_runs.append(scale_one(system, options.scale_workers, count, config))
            last = scale_runs[-1]
            _say(f"    queued at {last.queue_rate:,.0f}/s; drained {last.drained:,} at {last.drain_rate:,.0f}/s")
    minutes = (time.monotonic() - began) / 60
    notes = [
        f"- Throughput: one producer submits {options.tasks:,} add(x, y) ({options.celery_tasks:,} to Celery) and collects "
        "every result (the sum is checked). "
        f"zerotask's producer uses {zt.CLIENT_KIND}; Celery's sends every task (`send_task`, as `delay` does) then "
        f"`ResultSet.join_native`; the raw client keeps {options.window:,} requests in flight.",
        f"- Latency: {options.calls:,} sequential blocking add(1, 2): zerotask `Client.add`, Celery `.get()`, raw one "
        f"request at a time. Each run starts its processes afresh and sends {options.warmup} tasks untimed first, and "
        f"{options.warmup} blocking calls before the latency loop.",
        "- Every client (producer and caller) is a process of its own (`python -m bench.client`), as is every "
        "broker, node and worker: nothing else runs in the timed process, and nothing samples anything during a loop.",
        "- CPU/call: user + system CPU of every process involved (client, broker, node and its workers; raw: client, "
        "broker, workers), from /proc/PID/stat read after the warm-up and after the latency loop, never during it, "
        f"divided by the calls. The counters tick every {1000 / TICKS_PER_S:.0f} ms per process, so over "
        f"{options.calls:,} calls a figure is good to about {1e6 / TICKS_PER_S / options.calls:.0f} µs per process. "
        "Not measured for Celery, whose Redis server may serve others too.",
        "- vs Celery: the ratio to Celery at the same concurrency (`--pool solo` for 1 worker, `--pool prefork -c N` "
        "for N); vs raw: to the raw pyzmq ceiling with as many worker processes. Above 1× is more tasks/s; "
        "below 1× a lower latency or less CPU.",
        "- Raw ceiling: client DEALER → broker ROUTER/ROUTER → worker DEALER and back (4 hops), orjson, no task system, "
        f"each role a fresh process; each worker takes up to {options.raw_credit} requests ahead (credit-based, as a "
        "zerotask node grants it).",
    ]
    if redis.url:
        notes.append(
            f"- Celery: {redis.note}; broker and result backend in Redis database {options.redis_db}, flushed before "
            f"each run; worker `{' '.join(['--pool', 'solo|prefork', '--concurrency', 'N', *_celery_options()])}`, "
            "other settings default."
        )
    if options.scale > 0 or options.celery_scale > 0:
        notes.append(
            f"- Scale: the tasks are queued with no worker running (zerotask: pipelined JSON-RPC submits, "
            f"{options.window:,} in flight; Celery: `send_task` one by one, at {options.celery_scale:,} tasks since "
            f"its queueing and draining are far slower), then one node with {options.scale_workers} worker(s) drains "
            f"them for at most {options.drain_seconds:.0f} s, timed from its first task. Drain ÷ throughput compares "
            f"the drain rate with the {options.tasks:,}-task rate above at the same concurrency. A sample of about 100 "
            "finished tasks is checked."
        )
    for what in sorted({f"{run.system.split('-')[0]}: {run.memory_what}" for run in scale_runs}):
        notes.append(f"- Scale memory, {what}.")
    skipped = [name for name in options.systems if BY_NAME[name] not in systems]
    if skipped:
        notes.append(f"- Left out: {', '.join(skipped)}. {redis.note}.")
    if report.source_fingerprint() != fingerprint:
        warning = (
            f"- WARNING: zerotask's source changed during this run (sha256 {fingerprint} at the start, "
            f"{report.source_fingerprint()} at the end): the repetitions did not all run the same code."
        )
        notes.append(warning)
        _say(warning[2:])
    command = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [f"## {stamp}", "", *facts, "", report.main_table(runs), "", report.cpu_table(runs)]
    if scale_runs:
        sections += ["", report.scale_table(scale_runs, runs)]
    sections += ["", *notes, f"- `{command}`: {options.repeat} repetition(s), {minutes:.1f} minutes in all."]
    text = "\n".join(sections)
    print(text)
    if not options.no_write:
        report.append(options.output, text)
        _say(f"appended to {options.output}")
    ok = all(run.sum_ok and run.calls_ok for run in runs) and all(run.sample_ok for run in scale_runs)
    print("every result was right" if ok else "SOME RESULTS WERE WRONG: see the results column")
    return 0 if ok else 1


def _celery_options() -> list[str]:
    from bench.celery_bench import WORKER_OPTIONS

    return WORKER_OPTIONS
