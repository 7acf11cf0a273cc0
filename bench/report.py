"""The report: machine facts, the main table, the scale table and notes, as Markdown; BENCHMARKS.md."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import zmq

from bench.config import REPO_ROOT
from bench.stats import Run, ScaleRun, Spread

HEADER = """# Benchmarks

Each section below is one run of the benchmark in `bench/`, appended by it (or a trace, appended by
`python -m bench.trace --write`). To reproduce:

```sh
make bench                      # installs .[bench] (Celery with Redis), runs python -m bench, appends here
python -m bench -h              # the options: task counts, repetitions, systems, worker counts
python -m bench --no-write      # print the report only
python -m bench.trace           # where one blocking call's time goes, hop by hop (see below)
```

Every system runs as real processes on this one machine, interleaved (A B C A B C ...) so that a noisy
machine hurts all of them alike; each cell is the median of the repetitions, with the minimum and maximum.
Every role is a process of its own, started afresh for each run: the client (`python -m bench.client`), the
broker, the node and its workers (raw: the client, the broker and the workers). Celery uses the Redis on
127.0.0.1:6379 (or a redis-server it starts) and is left out, with a note, when there is none.

## Reading a run

- **tasks/s**: one producer runs 10,000 `add(x, y)` and collects every result.
- **p50 ms, p99 ms**: of 1,000 blocking `add(1, 2)` calls made one after the other.
- **CPU µs/call**: the user + system CPU that every process involved used during those calls (client,
  broker, node and workers; raw: client, broker, workers), divided by the calls; the second table splits
  it by process. The counters (/proc/PID/stat) are read after the warm-up and after the loop, never
  during it, while the client waits; they tick every 10 ms per process, about 10 µs per call per
  process over 1,000 calls. Not measured for Celery, whose Redis server may serve others too.
- **vs raw ceiling**: zerotask's tasks/s, p50, p99 and CPU per call divided by those of the raw pyzmq
  ceiling with as many workers: a client DEALER, a ROUTER/ROUTER broker and DEALER workers, orjson, 4
  hops and no task system (`bench/raw.py`), pipelined 1,000 requests deep for throughput, one request at
  a time for latency. Above 1× is more tasks/s; below 1×, a lower latency or less CPU.

## Tracing one call: `python -m bench.trace`

```sh
python -m bench.trace                            # 500 calls after 200 untimed: memory store, 1 node x 1 worker
python -m bench.trace --store sqlite --workers 2 # --store takes memory, sqlite or any spec the broker takes
python -m bench.trace --keep                     # keep the logs and the stamps (one JSON file per process)
python -m bench.trace --write                    # append the table to this file
```

It starts a broker, a node and a client as processes of its own and, in each, installs probes
(`bench/probe.py`) by wrapping zerotask's functions before `python -m zerotask.broker` or
`python -m zerotask.node` starts: the ZeroMQ sends and receives, the worker pipe's send_bytes and
recv_bytes, `jsonrpc.loads`, `BrokerCore.submit`, `assign` and `report`, the store's `add`
and `add_held`, `finish_many` and `flush`, `WorkerPool.add`, the worker's task run, `Client.call`.
zerotask/ is not changed, and nothing is installed outside a trace: off, it costs nothing. A probe appends
a `perf_counter_ns()` stamp (CLOCK_MONOTONIC, one clock for every process on the machine) and a
reference to what it saw; each process writes its stamps at exit, and the trace matches them to calls
by task id (the reply to the client by its JSON-RPC id; a stamp that names no task, such as a flush, by
its place between the call's other stamps).

How to read it: one row per hop, in the order a call takes them, with the median and the 90th
percentile over the timed calls; the last row is the whole call (the medians of the hops add up to
about the median of the whole). The owner says where the time is spent:

- **client, broker, node, worker**: Python in that process between two probes; the row says what runs.
- **wire**: from the sender's ZeroMQ send to the receiver's recv returning: libzmq's I/O threads at both
  ends, TCP over loopback, and the receiver waking from its poll. The raw ceiling pays 4 of these too.
- **pipe**: the same between the node and its worker (a multiprocessing pipe), which the raw ceiling
  does not have.

"By owner" sums the hop medians per owner. A probe costs about 0.2 µs (the trace measures it and says
how much the probes add to a call). When the hot path changes and a probe finds nothing to wrap, the
output names it and its hop merges into the next one; update the probes (`bench/probe.py`) and the points
of a call (`POINTS` in `bench/trace.py`); `tests/test_bench_smoke.py` fails until they match the code.

## Adding a system

Each row is a `System` in `SYSTEMS` (`bench/config.py`). A zerotask system is the brokers' `--store`
spec and how many brokers share it; each broker gets a node of its own with the row's workers, the
client talks to the first broker, and the CPU column counts every broker, node and worker. For instance:

```python
System("zerotask-redis", "zerotask", store="{redis}/12", needs_redis=True),
System("zerotask-redis-2-brokers", "zerotask", store="{redis}/12", brokers=2, needs_redis=True),
```

- `store`: `memory`, `sqlite` (a fresh file per run) or any spec the broker's `--store` takes, passed as it
  is, with `{redis}` replaced by the Redis the benchmark uses (redis://127.0.0.1:6379, or the
  redis-server it starts with `--private-redis`). A Redis database is flushed before and after every run,
  so give it one that nothing else uses (Celery's is `--redis-db`, 13).
- `needs_redis`: the benchmark looks for a Redis only when a selected system needs one, and leaves such
  systems out, with a note, when there is none (`bench/redis_env.py` asks for Celery to be installed
  too, which is true of `make bench`).
- Celery on the same Redis: the Celery rows already use that same server, in database `--redis-db`; a
  Celery row of its own is `System(NAME, "celery", pool="prefork", min_workers=2, needs_redis=True)`.
- `scale`: leave it False for a Redis store until `zt.scale` measures Redis's memory: it reads the
  broker process's, where a Redis store's tasks are not.
"""


def source_fingerprint() -> str:
    """A hash of zerotask's source files: what every zerotask process started by the run imports."""
    import zerotask

    root = Path(zerotask.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def source_state() -> str:
    """Which zerotask code runs: the git commit, whether zerotask/ has uncommitted changes, and the hash."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no git commit"
    dirty = " with uncommitted changes in zerotask/" if git("status", "--porcelain", "--", "zerotask") else ""
    return f"- zerotask source: {commit}{dirty}; sha256 of zerotask/**/*.py {source_fingerprint()}"


def machine_facts(redis_version: str) -> list[str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = models[0] if models else cpu
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"- CPUs: {os.cpu_count()} ({cpu}); load average at the start: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- zerotask {version('zerotask')}, pyzmq {version('pyzmq')} (libzmq {zmq.zmq_version()}), orjson {version('orjson')}",
        f"- Celery {version('celery')}, kombu {version('kombu')}, redis-py {version('redis')}, "
        f"Redis server {redis_version or 'none'}",
        source_state(),
    ]


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread(values: Sequence[float], scale: float = 1.0) -> str:
    spread = Spread.of([value * scale for value in values])
    if len(values) == 1:
        return _number(spread.median)
    return f"{_number(spread.median)} ({_number(spread.low)}–{_number(spread.high)})"


def _bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _groups(runs: Sequence[Run]) -> dict[tuple[str, int], list[Run]]:
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.system, run.workers), []).append(run)
    return groups


def _median(runs: Sequence[Run], value: Callable[[Run], float]) -> float:
    return Spread.of([value(run) for run in runs]).median


def _ratio(mine: Sequence[Run], theirs: Sequence[Run] | None, cpu: bool = False) -> str:
    """mine ÷ theirs: tasks/s and p50 (and p99 and CPU per call, with ``cpu``), medians of each."""
    if not theirs:
        return "—"
    rate = _median(mine, lambda r: r.rate) / _median(theirs, lambda r: r.rate)
    p50 = _median(mine, lambda r: r.p50_s) / _median(theirs, lambda r: r.p50_s)
    if not cpu:
        return f"{rate:.2f}× · {p50:.2f}×"
    p99 = _median(mine, lambda r: r.p99_s) / _median(theirs, lambda r: r.p99_s)
    mine_cpu, their_cpu = _cpu_median(mine), _cpu_median(theirs)
    versus_cpu = f"{mine_cpu / their_cpu:.2f}×" if mine_cpu is not None and their_cpu else "—"
    return f"{rate:.2f}× · {p50:.2f}× · {p99:.2f}× · {versus_cpu}"


def _cpu_median(runs: Sequence[Run]) -> float | None:
    """The median CPU seconds per blocking call of every process involved, None if not measured."""
    values = [run.cpu_per_call_s for run in runs]
    return None if any(value is None for value in values) else Spread.of([v for v in values if v is not None]).median


def _cpu_cell(runs: Sequence[Run], role: str | None = None) -> str:
    if any(run.cpu_s is None or (role is not None and role not in run.cpu_s) for run in runs):
        return "—"
    return _spread([(sum(run.cpu_s.values()) if role is None else run.cpu_s[role]) / run.calls for run in runs if run.cpu_s], 1e6)


def rates(runs: Sequence[Run]) -> dict[tuple[str, int], float]:
    """The median tasks/s of each (system, workers)."""
    return {key: _median(group, lambda r: r.rate) for key, group in _groups(runs).items()}


def main_table(runs: Sequence[Run]) -> str:
    groups = _groups(runs)
    celery = {workers: group for (system, workers), group in groups.items() if system.startswith("celery-")}
    raw = {workers: group for (system, workers), group in groups.items() if system == "raw"}
    lines = [
        "| system | workers | tasks/s | p50 ms | p99 ms | CPU µs/call | vs Celery: tasks/s · p50 "
        "| vs raw ceiling: tasks/s · p50 · p99 · CPU | results |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for (system, workers), group in groups.items():
        versus_celery = None if system.startswith("celery-") else celery.get(workers)
        versus_raw = None if system == "raw" else raw.get(workers)
        ok = all(run.sum_ok and run.calls_ok for run in group)
        lines.append(
            f"| {system} | {workers} | {_spread([r.rate for r in group])} | {_spread([r.p50_s for r in group], 1000)} "
            f"| {_spread([r.p99_s for r in group], 1000)} | {_cpu_cell(group)} | {_ratio(group, versus_celery)} "
            f"| {_ratio(group, versus_raw, cpu=True)} | {'sums right' if ok else 'WRONG'} |"
        )
    return "\n".join(lines)


CPU_ROLES = ("client", "broker", "node", "workers")


def cpu_table(runs: Sequence[Run]) -> str:
    """CPU per blocking call by process role, for the systems whose CPU was measured."""
    lines = [
        "| system | workers | CPU µs/call: client | broker | node | workers | all |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (system, workers), group in _groups(runs).items():
        if all(run.cpu_s is not None for run in group):
            cells = " | ".join(_cpu_cell(group, role) for role in CPU_ROLES)
            lines.append(f"| {system} | {workers} | {cells} | {_cpu_cell(group)} |")
    return "\n".join(lines)


def scale_table(scale_runs: Sequence[ScaleRun], runs: Sequence[Run]) -> str:
    medians = rates(runs)
    lines = [
        "| system | workers | queued | queued/s | memory idle → holding (per task) | memory at the end "
        "| drained | drain tasks/s | drain ÷ throughput | results |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in scale_runs:
        per_task = (run.memory_holding - run.memory_before) / run.tasks
        baseline = medians.get((run.system, run.workers))
        versus = f"{run.drain_rate / baseline:.2f}×" if baseline else "—"
        lines.append(
            f"| {run.system} | {run.workers} | {run.tasks:,} | {_number(run.queue_rate)} "
            f"| {_bytes(run.memory_before)} → {_bytes(run.memory_holding)} ({_bytes(per_task)}) | {_bytes(run.memory_after)} "
            f"| {run.drained:,} in {run.drain_seconds:.1f} s | {_number(run.drain_rate)} | {versus} "
            f"| {'sample right' if run.sample_ok else 'WRONG'} |"
        )
    return "\n".join(lines)


def append(path: Path, section: str) -> None:
    """Append a section to BENCHMARKS.md, creating it with its header first if need be."""
    text = path.read_text() if path.exists() else HEADER
    path.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")
