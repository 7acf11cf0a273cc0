"""The benchmark keeps working: ``python -m bench`` with tiny numbers prints every row, with right sums and
the CPU per call, and ``python -m bench.trace`` traces a call through every hop.

Real processes, as in a real run (Celery too when it is installed and a Redis is at hand); no time is asserted.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zerotask.testing import scaled

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--tasks",
    "200",
    "--celery-tasks",
    "200",
    "--calls",
    "50",
    "--scale",
    "2000",
    "--celery-scale",
    "300",
    "--repeat",
    "1",
    "--warmup",
    "20",
]
# A redis-server of its own when one is installed, so that runs on a shared machine never flush each other's data.
ISOLATED = ["--drain-seconds", "60", "--private-redis", "--redis-db", "14"]


def _celery_can_run() -> bool:
    """What the benchmark decides: Celery runs if it is installed and a Redis answers or can be started."""
    if importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None:
        return False
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        return True
    except (redis.RedisError, OSError):
        return shutil.which("redis-server") is not None


def _tables(report: str) -> list[tuple[list[str], dict[tuple[str, str], list[str]]]]:
    """The Markdown tables of the report, in order: (the header's cells, (system, workers) -> the row's cells)."""
    tables: list[tuple[list[str], dict[tuple[str, str], list[str]]]] = []
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| system |"):
            tables.append((cells, {}))
        elif line.startswith("| ") and tables and len(cells) > 2 and cells[1].isdigit():
            tables[-1][1][(cells[0], cells[1])] = cells
    return tables


def _number(cell: str) -> float:
    """The median in a cell such as ``1,234 (1,100–1,300)``."""
    return float(cell.split(" ")[0].replace(",", ""))


@pytest.mark.timeout(600)
def test_benchmark_prints_every_row_with_right_results(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    args = [sys.executable, "-m", "bench", *TINY, *ISOLATED, "--output", str(output), "--no-write"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=scaled(540))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    report = done.stdout
    assert "- CPUs: " in report and "- Python " in report  # machine facts above the tables
    (header, rows), (cpu_header, cpu_rows), (_, scale_rows) = _tables(report)
    measured = {("zerotask-memory", "1"), ("zerotask-memory", "2"), ("zerotask-sqlite", "1"), ("zerotask-sqlite", "2")}
    measured |= {("raw", "1"), ("raw", "2")}
    celery = _celery_can_run()
    if celery:  # the benchmark then has a Redis, and runs zerotask on it too
        measured |= {(system, workers) for system in ("zerotask-redis", "zerotask-redis-2-brokers") for workers in ("1", "2")}
    expected = set(measured)
    scale_expected = {("zerotask-memory", "2"), ("zerotask-sqlite", "2")}
    if celery:
        expected |= {("celery-solo", "1"), ("celery-prefork", "2")}
        scale_expected.add(("celery-prefork", "2"))
    else:
        assert "Celery left out" in report
    assert set(rows) == expected, report
    assert all(cells[-1] == "sums right" for cells in rows.values()), report
    assert set(scale_rows) == scale_expected, report
    assert all(cells[-1] == "sample right" for cells in scale_rows.values()), report
    # Latency side by side: p50, p99 and CPU per call, and the ratios of each to the raw ceiling.
    p50, p99, cpu = header.index("p50 ms"), header.index("p99 ms"), header.index("CPU µs/call")
    versus_raw = next(i for i, name in enumerate(header) if name.startswith("vs raw ceiling"))
    for key in measured:
        cells = rows[key]
        assert _number(cells[p50]) > 0 and _number(cells[p99]) >= _number(cells[p50]) and _number(cells[cpu]) >= 0, report
        assert len(cells[versus_raw].split(" · ")) == (1 if key[0] == "raw" else 4), report  # tasks/s, p50, p99, CPU
    assert all(cells[cpu] == "—" for key, cells in rows.items() if key[0].startswith("celery")), report
    # CPU per call by process: every process involved, and the sum.
    assert cpu_header[2:] == ["CPU µs/call: client", "broker", "node", "workers", "all"], report
    assert set(cpu_rows) == measured, report
    for (system, _), cells in cpu_rows.items():
        roles = dict(zip(cpu_header[2:], cells[2:], strict=True))
        assert roles["node"] == "—" if system == "raw" else roles["node"] != "—", report
        assert all(cell != "—" for role, cell in roles.items() if role != "node"), report
    assert "every result was right" in report
    assert not output.exists()  # --no-write


def test_report_is_appended_under_a_header(tmp_path: Path) -> None:
    from bench.report import HEADER, append

    output = tmp_path / "BENCHMARKS.md"
    append(output, "## first run\n\n| a |")
    append(output, "## second run\n\n| b |")
    text = output.read_text()
    assert text.startswith(HEADER.splitlines()[0])
    assert text.count("# Benchmarks") == 1
    assert text.index("## first run") < text.index("## second run")


@pytest.mark.timeout(300)
def test_trace_times_every_hop_of_a_call() -> None:
    args = [sys.executable, "-m", "bench.trace", "--calls", "20", "--warmup", "5"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=scaled(240))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    rows = [[cell.strip() for cell in line.split("|")] for line in done.stdout.splitlines() if line.startswith("| ")]
    owners = {row[2] for row in rows if row[1].isdigit()}
    assert owners == {"client", "broker", "node", "worker", "wire", "pipe"}, done.stdout
    assert "**the whole call**" in done.stdout and "By owner" in done.stdout, done.stdout
    # A probe that finds nothing to wrap means zerotask's hot path moved: update bench/probe.py and bench/trace.py.
    assert "found nothing to wrap" not in done.stdout and "left out" not in done.stdout, done.stdout


@pytest.mark.timeout(300)
def test_roles_gives_each_process_its_cpu_per_task() -> None:
    args = [sys.executable, "-m", "bench.roles", "--tasks", "2000", "--rounds", "1", "--store", "sqlite"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=scaled(240))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    row = [cell.strip() for cell in done.stdout.splitlines()[-1].split("|")[1:-1]]
    assert row[0] == "1" and float(row[1].replace(",", "")) > 0, done.stdout
    client, broker, node, workers, total = (float(cell) for cell in row[2:])
    assert broker > 0 and total >= client + broker + node + workers - 0.2, done.stdout  # every role was read


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (.ci/run installs it)")
def test_instructions_counts_every_process_of_a_call() -> None:
    args = [sys.executable, "-m", "bench.instructions", "--calls", "60", "--pool", "process"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=scaled(540))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in done.stdout.splitlines() if line.startswith("| ")}
    counts = [cell.strip().split(" ")[0].replace(",", "") for role in ("client", "broker", "worker") for cell in rows[role]]
    # A call costs each process thousands of instructions at least (a pyzmq send alone is more than 1,000).
    assert len(counts) == 6 and all(int(count) > 1_000 for count in counts), done.stdout
    assert "× raw" in rows["all"][0], done.stdout


def test_trace_matches_stamps_to_their_call() -> None:
    """Stamps are matched by task id, and a stamp naming no task by its place between its neighbours:
    another task's message, or a heartbeat parsed between two hops of the call, is passed over."""
    from bench.trace import POINTS, merge, walk

    clock = iter(range(1_000, 1_000_000, 10))
    stamps: dict[str, list[list[object]]] = {"client": [["mark.timed", 0, []]]}
    expected = []
    for role, name, keyed, _ in POINTS:
        if (role, name) == ("broker", "recv"):  # before each, a message about something else
            stamps.setdefault(role, []).extend([["recv", next(clock), ["another-task"]], ["loads", next(clock), []]])
        keys = ["t1"] if keyed else []
        if role == "client" and name in ("send", "recv"):
            keys = ["#7", "t1"] if name == "send" else ["#7"]  # the reply names the request, not the task
        elif (role, name) == ("broker", "send") and any(entry[0] == "send" for entry in stamps.get("broker", [])):
            keys = ["#7"]
        expected.append(next(clock))
        stamps.setdefault(role, []).append([name, expected[-1], keys])
    dumps = [{"role": role, "stamps": entries, "missing": []} for role, entries in stamps.items()]
    merged, calls = merge(dumps)
    assert [call[2] for call in calls] == ["t1"]
    assert walk(merged, *calls[0]) == expected
