"""Trace blocking calls hop by hop: ``python -m bench.trace [--calls 500] [--store memory|sqlite|SPEC]
[--pool process|thread]``.

Starts a broker, a node (``--workers``, 1 by default: worker processes, or threads with ``--pool
thread``) and a client, each a process with the probes of :mod:`bench.probe` installed (zerotask's code
is not edited: the probes wrap its functions at start-up), makes ``--warmup`` calls, then ``--calls``
sequential blocking ``add(1, 2)`` calls, stops everything, merges the stamps of every process (one
CLOCK_MONOTONIC for all) and prints, per hop of a call, the median and 90th percentile in microseconds,
then the time by owner. See BENCHMARKS.md, "Tracing one call".

The stamps are matched to calls by task id (in the payloads, the records and the outcomes; the client's
reply by its JSON-RPC id); a stamp that names no task (a flush, a parse) is the first of its kind after
the previous point of the same call, in its process, and before the next point that names the task.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench import probe, report
from bench.config import REPO_ROOT, System
from bench.procs import Process, log_path
from bench.stats import percentile
from bench.zt import Processes, flush_store, store_spec

# The points a blocking call passes, in order: (role, stamp, whether the stamp names the task, what the
# hop that ends at this point is). The first and last points are the client's call and return.
POINTS: tuple[tuple[str, str, bool, str], ...] = (
    ("client", "call", False, ""),
    ("client", "send", True, "client: Client.call → request sent (params, jsonrpc.dumps)"),
    ("broker", "recv", True, "wire: client send → broker recv"),
    ("broker", "loads", False, "broker: recv → parsed (jsonrpc.loads)"),
    ("broker", "submit", False, "broker: parsed → BrokerCore.submit (parse_request, dispatch, params)"),
    ("broker", "store.add", True, "broker: submit → store.add_held (checks, TaskRecord, a free node)"),
    ("broker", "store.added", True, "broker: store.add_held (the direct path: nothing queued, a node free)"),
    ("broker", "submitted", True, "broker: store.add_held → submit returns"),
    ("broker", "assign", False, "broker: submitted → BrokerCore.assign (waiter, rest of the round)"),
    ("broker", "assigned", True, "broker: BrokerCore.assign (what the direct path handed)"),
    ("broker", "store.flush", False, "broker: assigned → store.flush (to_wire, outbox)"),
    ("broker", "store.flushed", False, "broker: store.flush"),
    ("broker", "send", True, "broker: flushed → sent to node (encode, send_multipart)"),
    ("node", "recv", True, "wire: broker send → node recv"),
    ("node", "pool.add", True, "node: recv → WorkerPool.add (jsonrpc.items)"),
    ("node", "pipe.send", True, "node: pool.add → pipe send (dispatch, jsonrpc.dumps)"),
    ("worker", "pipe.recv", True, "pipe: node → worker"),
    ("worker", "run", True, "worker: pipe recv → task starts (jsonrpc.loads)"),
    ("worker", "ran", True, "worker: the task runs (dispatcher.run, encode the outcome)"),
    ("worker", "pipe.send", True, "worker: task done → pipe send"),
    ("node", "pipe.recv", True, "pipe: worker → node"),
    ("node", "send", True, "node: pipe recv → sent to broker (outcome, end of round, batch)"),
    ("broker", "recv", True, "wire: node send → broker recv"),
    ("broker", "loads", False, "broker: recv → parsed (jsonrpc.loads)"),
    ("broker", "report", True, "broker: parsed → BrokerCore.report (dispatch, params)"),
    ("broker", "store.finish_many", True, "broker: report → store.finish_many"),
    ("broker", "store.finished_many", True, "broker: store.finish_many"),
    ("broker", "reported", True, "broker: finish_many → report returns (waiter, reply, hooks)"),
    ("broker", "store.flush", False, "broker: reported → store.flush (rest of the round)"),
    ("broker", "store.flushed", False, "broker: store.flush"),
    ("broker", "send", True, "broker: flushed → reply sent (encode, send_multipart)"),
    ("client", "recv", True, "wire: broker send → client recv"),
    ("client", "return", False, "client: recv → Client.call returns (jsonrpc.loads, parse)"),
)
# With --pool thread the task runs in the node's process, in a pool thread or in the node's loop itself
# (zerotask.node.inline): the points from the node's recv to its send are these instead.
_NODE_THREAD: tuple[tuple[str, str, bool, str], ...] = (
    ("node", "recv", True, "wire: broker send → node recv"),
    ("node", "pool.add", True, "node: recv → ThreadPool.add (jsonrpc.items)"),
    ("node", "run", True, "node: pool.add → task starts (dispatch; the hand-off to a thread, if not run in the loop)"),
    ("node", "ran", True, "node: the task runs (dispatcher.run, encode the outcome)"),
    ("node", "send", True, "node: task done → sent to broker (the thread's outcome back, end of round, batch)"),
)
_NODE_START = POINTS.index(("node", "recv", True, "wire: broker send → node recv"))
_NODE_END = POINTS.index(("node", "send", True, "node: pipe recv → sent to broker (outcome, end of round, batch)"))
THREAD_POINTS = POINTS[:_NODE_START] + _NODE_THREAD + POINTS[_NODE_END + 1 :]
Points = tuple[tuple[str, str, bool, str], ...]
OWNERS = ("client", "broker", "node", "worker", "wire", "pipe")

Stamps = dict[tuple[str, str], tuple[list[int], list[set[str]]]]  # (role, name) -> times, keys (by time)


# ---- the processes -----------------------------------------------------------------------------------


def _probed(directory: Path, pool: str) -> Any:
    """The command prefix that runs a module for a role with the probes installed (a node's with ``pool``)."""
    return lambda role: [sys.executable, "-m", "bench.trace", "_probe", role, str(directory), pool]


def trace(options: argparse.Namespace, directory: Path) -> list[dict[str, Any]]:
    """Run the traced cluster and client; returns what every process wrote (see bench.probe.dump)."""
    stamps = directory / "stamps"
    stamps.mkdir()
    processes = Processes(directory, _probed(stamps, options.pool))
    store = store_spec(System("trace", "zerotask", store=options.store), directory, options.redis)
    flush_store(store)
    try:
        endpoint = processes.start_broker(store)
        processes.start_node(endpoint, options.workers)
        module = [sys.executable, "-m", "bench.trace"]
        client = Process(
            [*module, "_client", str(stamps), endpoint, str(options.calls), str(options.warmup)], log_path(directory, "client")
        )
        try:
            if client.process.wait(60 + options.calls * 0.1) != 0:
                raise RuntimeError(f"the traced client failed:\n{client.output()[-3000:]}")
        finally:
            client.stop()
    except Exception:
        print(processes.logs(), file=sys.stderr)
        raise
    finally:
        processes.stop()
        flush_store(store)
    return [orjson.loads(path.read_bytes()) for path in sorted(stamps.glob("*.json"))]


def _client(directory: str, endpoint: str, calls: int, warmup: int) -> None:
    """The traced client: ``warmup`` calls, the mark, ``calls`` calls, then its stamps are written."""
    from zerotask.client import Client

    probe.install("client", Path(directory))
    with Client(endpoint, timeout=30) as client:
        for _ in range(warmup):
            client.add(1, 2)
        probe.mark("timed")
        for _ in range(calls):
            if client.add(1, 2) != 3:
                raise SystemExit("a wrong result")


def _probe(role: str, directory: str, pool: str, module: str, args: list[str]) -> None:
    """Run ``python -m MODULE ARGS`` in this process with the probes of ``role`` installed; a node with
    ``--pool POOL``."""
    import runpy

    probe.install(role, Path(directory))
    if role == "node":
        args = [*args, "--pool", pool]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


# ---- merging ---------------------------------------------------------------------------------------


def merge(dumps: list[dict[str, Any]]) -> tuple[Stamps, list[tuple[int, int, str]]]:
    """Every stamp by (role, name), sorted by time, with its task ids; and the timed calls as (call
    time, return time, task id)."""
    raw: dict[tuple[str, str], list[tuple[int, set[str]]]] = {}
    for dumped in dumps:
        for name, t, keys in dumped["stamps"]:
            raw.setdefault((dumped["role"], name), []).append((t, set(keys)))
    requests: dict[str, str] = {}  # "#N" -> the task id of the client's request N
    for _, keys in raw.get(("client", "send"), []):
        ids, task_ids = [k for k in keys if k.startswith("#")], [k for k in keys if not k.startswith("#")]
        if len(ids) == 1 and len(task_ids) == 1:
            requests[ids[0]] = task_ids[0]
    stamps: Stamps = {}
    for key, entries in raw.items():
        entries.sort(key=lambda entry: entry[0])
        keysets = [keys | {requests[k] for k in keys if k in requests} for _, keys in entries]
        stamps[key] = ([t for t, _ in entries], keysets)
    timed_from = min(stamps.get(("client", "mark.timed"), ([0], []))[0])
    starts, ends = stamps.get(("client", "call"), ([], []))[0], stamps.get(("client", "return"), ([], []))[0]
    calls = []
    for start, end in zip(starts, ends, strict=False):
        if start >= timed_from:
            task_id = _first(stamps, ("client", "send"), start, end, None)
            if task_id is not None:
                calls.append((start, end, next(k for k in stamps[("client", "send")][1][task_id] if not k.startswith("#"))))
    return stamps, calls


def _first(stamps: Stamps, key: tuple[str, str], low: int, high: int, task_id: str | None) -> int | None:
    """The index of the first stamp ``key`` in [low, high] (naming ``task_id``, unless None)."""
    times, keysets = stamps.get(key, ([], []))
    for index in range(bisect_left(times, low), len(times)):
        if times[index] > high:
            return None
        if task_id is None or task_id in keysets[index]:
            return index
    return None


def walk(stamps: Stamps, start: int, end: int, task_id: str, points: Points = POINTS) -> list[int | None]:
    """The time of every point of ``points`` for one call (None where it was not found): first the
    points that name the task, in order; then each other point, between its neighbours."""
    found: list[int | None] = [None] * len(points)
    found[0], found[-1] = start, end
    previous = start
    for position, (role, name, keyed, _) in enumerate(points[1:-1], 1):
        if keyed and (index := _first(stamps, (role, name), previous, end, task_id)) is not None:
            found[position] = previous = stamps[(role, name)][0][index]
    for position, (role, name, keyed, _) in enumerate(points[1:-1], 1):
        if not keyed:
            low = max((t for t in found[:position] if t is not None), default=start)
            high = min((t for t in found[position + 1 :] if t is not None), default=end)
            if (index := _first(stamps, (role, name), low, high, None)) is not None:
                found[position] = stamps[(role, name)][0][index]
    return found


# ---- the table -------------------------------------------------------------------------------------


def hops(
    stamps: Stamps, calls: list[tuple[int, int, str]], points: Points = POINTS
) -> tuple[list[tuple[str, list[float]]], list[str]]:
    """(label, microseconds per call) for every hop between the points found in most calls, and the
    points left out because they were not."""
    walks = [walk(stamps, start, end, task_id, points) for start, end, task_id in calls]
    kept = [i for i in range(len(points)) if sum(w[i] is not None for w in walks) * 2 > len(walks)]
    dropped = [f"{points[i][0]} {points[i][1]}" for i in range(len(points)) if i not in kept]
    rows = []
    for before, after in zip(kept, kept[1:], strict=False):
        label = points[after][3]
        if after != before + 1:
            label += f" (from {points[before][0]} {points[before][1]}: the points between were not seen)"
        values = []
        for found in walks:
            start, end = found[before], found[after]
            if start is not None and end is not None:
                values.append((end - start) / 1000)
        rows.append((label, values))
    return rows, dropped


def table(rows: list[tuple[str, list[float]]], calls: list[tuple[int, int, str]]) -> str:
    lines = ["| # | owner | hop | median µs | p90 µs |", "| ---: | --- | --- | ---: | ---: |"]
    by_owner: dict[str, float] = dict.fromkeys(OWNERS, 0.0)
    for number, (label, values) in enumerate(rows, 1):
        owner, _, what = label.partition(": ")
        median = statistics.median(values) if values else float("nan")
        by_owner[owner] = by_owner.get(owner, 0.0) + median
        p90 = percentile(values, 0.9) if values else float("nan")
        lines.append(f"| {number} | {owner} | {what} | {median:.1f} | {p90:.1f} |")
    totals = [(end - start) / 1000 for start, end, _ in calls]
    lines.append(
        f"| | | **the whole call** (Client.call → return); the hop medians add up to "
        f"{sum(by_owner.values()):.1f} | **{statistics.median(totals):.1f}** | **{percentile(totals, 0.9):.1f}** |"
    )
    whole = sum(by_owner.values()) or 1.0
    owners = ", ".join(
        f"{owner} {by_owner[owner]:.0f} µs ({by_owner[owner] / whole:.0%})" for owner in by_owner if by_owner[owner]
    )
    return "\n".join(lines) + f"\n\nBy owner (sum of the hop medians): {owners}."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_probe"]:
        _probe(argv[1], argv[2], argv[3], argv[4], argv[5:])
        return 0
    if argv[:1] == ["_client"]:
        _client(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500, help="timed sequential calls (default 500)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before the timed ones (default 200)")
    parser.add_argument("--store", default="memory", help="the broker's --store: memory, sqlite (a fresh file) or a spec")
    parser.add_argument("--workers", type=int, default=1, help="the node's workers, processes or threads (default 1)")
    parser.add_argument("--pool", choices=["process", "thread"], default="process", help="the node's pool (default process)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="what {redis} in --store stands for")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the stamps (the directory is printed)")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md too")
    options = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    directory = Path(tempfile.mkdtemp(prefix="zerotask-trace-"))
    try:
        dumps = trace(options, directory)
    finally:
        if options.keep:
            print(f"logs and stamps: {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    stamps, calls = merge(dumps)
    missing = sorted({target for dumped in dumps for target in dumped["missing"]})
    if not calls:
        print("no timed call was traced: is the client's probe installed?", file=sys.stderr)
        return 1
    points = THREAD_POINTS if options.pool == "thread" else POINTS
    rows, dropped = hops(stamps, calls, points)
    cost = probe.cost_ns()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python -m bench.trace", *argv])
    notes = [
        f"- `{command}`: {len(calls)} sequential blocking add(1, 2) calls after {options.warmup} untimed, "
        f"{options.store} store, 1 node × {options.workers} worker(s), {options.pool} pool; every process traced.",
        f"- A probe costs about {cost:.0f} ns here; the {len(points)} points of a call (and a few more stamps "
        f"off its path) add about {cost * len(points) / 1000:.0f} µs to it.",
    ]
    if missing:
        notes.append(f"- Probes that found nothing to wrap (the code moved on): {', '.join(missing)}.")
    if dropped:
        notes.append(f"- Points not seen in most calls, left out (their time is in the next hop): {', '.join(dropped)}.")
    facts = report.machine_facts("")
    text = "\n".join([f"## Trace of one call, {stamp}", "", *facts[:3], facts[-1], "", table(rows, calls), "", *notes])
    print(text)
    if options.write:
        report.append(REPO_ROOT / "BENCHMARKS.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
