"""The benchmark keeps working: ``python -m bench`` with tiny numbers prints every row, with right sums.

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
TINY = ["--tasks", "200", "--calls", "50", "--scale", "2000", "--celery-scale", "300", "--repeat", "1", "--warmup", "20"]
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


def _tables(report: str) -> list[dict[tuple[str, str], str]]:
    """The Markdown tables of the report, in order: (system, workers) -> the last cell (the results check)."""
    tables: list[dict[tuple[str, str], str]] = []
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| system |"):
            tables.append({})
        elif line.startswith("| ") and tables and len(cells) > 2 and cells[1].isdigit():
            tables[-1][(cells[0], cells[1])] = cells[-1]
    return tables


@pytest.mark.timeout(600)
def test_benchmark_prints_every_row_with_right_results(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    args = [sys.executable, "-m", "bench", *TINY, *ISOLATED, "--output", str(output), "--no-write"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=scaled(540))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    report = done.stdout
    assert "- CPUs: " in report and "- Python " in report  # machine facts above the tables
    rows, scale_rows = _tables(report)
    expected = {("zerotask-memory", "1"), ("zerotask-memory", "2"), ("zerotask-sqlite", "1"), ("zerotask-sqlite", "2")}
    expected |= {("raw", "1"), ("raw", "2")}
    scale_expected = {("zerotask-memory", "2"), ("zerotask-sqlite", "2")}
    if _celery_can_run():
        expected |= {("celery-solo", "1"), ("celery-prefork", "2")}
        scale_expected.add(("celery-prefork", "2"))
    else:
        assert "Celery left out" in report
    assert set(rows) == expected, report
    assert all(check == "sums right" for check in rows.values()), report
    assert set(scale_rows) == scale_expected, report
    assert all(check == "sample right" for check in scale_rows.values()), report
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
