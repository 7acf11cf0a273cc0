"""Child processes the benchmark starts: brokers, nodes, Celery workers, the raw ceiling, clients, redis-server.

Each runs in a session of its own, so :meth:`Process.stop` can end it together with any children it
forked (a node's workers, Celery's prefork pool) by process group, and nothing else.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_checked_source = False


class Process:
    """A child process in its own session, its output in a log file; :meth:`stop` ends it for sure."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
        leader_first: bool = False,
    ) -> None:
        """``pipes``: stdin and stdout are pipes to this process (stderr still goes to the log).
        ``leader_first``: :meth:`stop` sends SIGTERM to the process alone, so that it stops its own
        children (a zerotask node its workers), and only then SIGKILL to whatever is left of the group."""
        _check_source(cwd)
        self.args = args
        self.log_path = log_path
        self.leader_first = leader_first
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        stdout = subprocess.PIPE if pipes else self._log
        stdin = subprocess.PIPE if pipes else subprocess.DEVNULL
        self.process = subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT if not pipes else self._log,
            cwd=cwd, env=env, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the process group (or its leader alone), SIGKILL to whatever is left after ``timeout_s``."""
        if self.leader_first:
            if self.alive():
                self.process.send_signal(signal.SIGTERM)
        else:
            self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # the leader if it hung, and any child it left behind
        self.process.wait(timeout_s)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


_logs = itertools.count(1)


def log_path(directory: Path, name: str) -> Path:
    """A fresh log file name in ``directory``: numbered, so runs never share one."""
    return directory / f"{next(_logs):03d}-{name}.log"


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of a running process from /proc/PID/status, in KiB (VmHWM: peak RSS; VmRSS: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; raise TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def drain(left: Callable[[], tuple[int, int]], count: int, limit_s: float) -> tuple[int, float]:
    """Watch a queue of ``count`` tasks drain, from now until it is empty or ``limit_s`` has passed;
    ``left()`` says how many are queued and how many are held by workers. Returns (finished, seconds)."""
    started = time.perf_counter()
    while True:
        queued, held = left()
        seconds = time.perf_counter() - started
        if (queued == 0 and held == 0) or seconds >= limit_s:
            return count - queued - held, seconds
        time.sleep(0.05)


def _check_source(cwd: Path | None) -> None:
    """Warn, once, when the processes started would run zerotask from another tree than PYTHONPATH names:
    ``python -m`` puts the directory it starts in before PYTHONPATH, so an A/B run from one checkout with
    PYTHONPATH set to another runs the first checkout's code in every process it starts (both arms alike:
    a void comparison, made here once)."""
    global _checked_source
    if _checked_source:
        return
    _checked_source = True
    first = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    if not first or not (Path(first) / "zerotask").is_dir():
        return
    start = (cwd or Path.cwd()).resolve()
    if (start / "zerotask").is_dir() and start != Path(first).resolve():
        print(
            f"warning: PYTHONPATH names {first}, but the processes started here run the zerotask of {start}"
            f" (python -m puts its starting directory first): run from {first} to measure its code",
            file=sys.stderr,
        )
