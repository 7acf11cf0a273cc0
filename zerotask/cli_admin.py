"""The operator's commands: ``zerotask inspect``, ``failed``, ``retry`` and ``purge`` (registered in
:mod:`zerotask.cli`, which adds the CURVE options). Each calls one operator method of the broker
(docs/protocol.md, section 5) and prints a readable table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from zerotask import jsonrpc, wire
from zerotask.client import Client
from zerotask.client.calls import DEFAULT_ENDPOINT
from zerotask.exceptions import ZerotaskError

TIMEOUT_S = 10.0


def _common(parser: argparse.ArgumentParser, json_output: bool = True) -> None:
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="SECONDS", help="for the answer (%(default)s)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the broker's answer as JSON")


def _ask(options: argparse.Namespace, parser: argparse.ArgumentParser, method: str, params: dict[str, Any]) -> Any:
    """The broker's answer; prints an error and exits 1 if it refuses; a usage error for unusable keys."""
    try:
        client = Client(options.broker, curve_secret=options.curve_secret, broker_key=options.broker_key, timeout=options.timeout)
    except ValueError as problem:
        parser.error(str(problem))
    with client:
        try:
            return client.rpc(method, params, options.timeout)
        except (ZerotaskError, TimeoutError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _print_json(value: Any) -> None:
    print(jsonrpc.dumps(value).decode())


# ---- inspect ---------------------------------------------------------------------------------------


def inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def run_inspect(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    seen = _ask(options, parser, wire.INSPECT, {})
    if options.json:
        _print_json(seen)
        return 0
    print(f"broker up {_age(seen['uptime_s'])}")
    print()
    print("NODES")
    rows = [
        [n["name"], str(n["workers"]), str(n["busy"]), str(n["credit"]), str(n["finished"]), _age(n["last_seen_s"])]
        for n in seen["nodes"]
    ]
    print(_table(rows, ["name", "workers", "busy", "credit", "finished", "last seen"]) if rows else "(none connected)")
    print()
    print("QUEUES")
    rows = [[q["name"], str(q["depth"]), _age(q["oldest_s"])] for q in seen["queues"]]
    print(_table(rows, ["name", "depth", "oldest"]) if rows else "(nothing queued)")
    print()
    print("TASKS")
    print(_table([[state, str(count)] for state, count in seen["states"].items()], ["state", "count"]))
    print()
    rates = seen["throughput"]
    print(f"THROUGHPUT  submitted {rates['submitted_per_s']:g}/s  finished {rates['finished_per_s']:g}/s (last 10 s)")
    return 0


# ---- failed ----------------------------------------------------------------------------------------


def failed_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="the newest N failures (%(default)s)")


def run_failed(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 < options.limit <= 1000:
        parser.error("--limit must be 1 to 1000")
    tasks = _ask(options, parser, wire.TASKS, {"state": wire.FAILED, "limit": options.limit})
    if options.json:
        _print_json(tasks)
        return 0
    rows = []
    for task in tasks:
        finished = task.get("finished_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(finished)) if finished else "-"
        error = task.get("error") or {}
        message = str(error.get("message", "")).splitlines()[0] if error.get("message") else ""
        rows.append([task["task_id"], task["method"], message[:80], when])
    print(_table(rows, ["task id", "name", "error", "failed at"]) if rows else "no failed tasks")
    return 0


# ---- retry and purge -------------------------------------------------------------------------------


def retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id", metavar="TASK_ID", help="a FAILED or REVOKED task, to queue again as new")
    _common(parser, json_output=False)


def run_retry(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    state = _ask(options, parser, wire.RETRY_TASK, {"task_id": options.task_id})
    print(f"{options.task_id} {state}")
    return 0


def purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the task name whose queued tasks to revoke")
    _common(parser, json_output=False)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run_purge(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not options.yes and sys.stdin.isatty():
        answer = input(f"revoke every queued {options.name!r} task? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return 1
    purged, more = 0, True
    while more:  # the broker revokes a bounded number per call
        answer = _ask(options, parser, wire.PURGE, {"method": options.name})
        purged += answer["purged"]
        more = answer["more"] and answer["purged"] > 0
    print(f"purged {purged} queued {options.name!r} task(s)")
    return 0
