"""CPU time of the processes a run involves, read from /proc/PID/stat before and after a timed loop.

Nothing here runs during the loop: :func:`snapshot` is called once before it and once after, by the
benchmark process, which is not the process being timed. A process's utime and stime in /proc/PID/stat
cover all its threads (ZeroMQ's I/O thread included) and come in clock ticks (10 ms on most Linux
systems), so a figure per call is only as good as the loop is long: over 1,000 calls, a tick is 10 µs
per call per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
Roles = Mapping[str, Iterable[int]]  # a role ("client", "broker", "node", "workers") -> its process ids


def cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds the process has used so far (all its threads), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime: fields 14 and 15


def children(pid: int) -> list[int]:
    """The process's children (of all its threads)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(child) for child in text.split())
    except OSError:
        return _children_by_scan(pid)
    return found


def _children_by_scan(pid: int) -> list[int]:
    """Children found by reading every process's parent, for kernels without /proc/PID/task/TID/children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def descendants(pids: Iterable[int]) -> list[int]:
    """Every process below these ones (children, their children...), not the ones given."""
    found: list[int] = []
    stack = list(pids)
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def snapshot(roles: Roles) -> dict[str, dict[int, float]]:
    """CPU seconds used so far by every process of every role (processes already gone are left out)."""
    taken: dict[str, dict[int, float]] = {}
    for role, pids in roles.items():
        taken[role] = {pid: used for pid in pids if (used := cpu_s(pid)) is not None}
    return taken


def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each role used between two snapshots, counting the processes seen in both."""
    return {
        role: sum(after[role][pid] - start for pid, start in processes.items() if pid in after.get(role, {}))
        for role, processes in before.items()
    }
