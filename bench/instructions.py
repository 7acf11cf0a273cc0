"""Instructions per blocking call, by process: ``python -m bench.instructions [--calls 1000] [--pool process,thread]``.

Times on this shared 2-CPU machine move by 20% from run to run, so a change of a few percent in a blocking
call's cost cannot be seen in them. The instructions a process executes for a call can: this runs one
process of a system at a time under valgrind's callgrind (``apt-get install valgrind``), counting nothing
during its start and the warm-up, then counting over ``--calls`` blocking add(1, 2) calls, and divides.
The same count is within 0.1% from run to run. Every other process runs at full speed, as it does in the
benchmark. Roles: the client (``python -m bench.client``, the blocking Client), the broker, the node and
its worker process (``--pool process``; with ``--pool thread`` the task runs in the node), and the raw
pyzmq ceiling's client, broker and worker (bench.raw) for comparison.

Instructions are not time: a cache miss or a wake-up costs none, a system call's kernel side is not
counted, and the ZeroMQ I/O threads are counted with their process. Use it to see what a change costs,
next to ``python -m bench.latency`` for what a call takes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import cpu
from bench.client import ClientProcess
from bench.config import Config
from bench.procs import Process, log_path, wait_for
from bench.zt import TASKS_MODULE, info
from zerotask.testing import free_port

ROLES = {
    "process": ("client", "broker", "node", "worker"),
    "thread": ("client", "broker", "node"),
    "raw": ("client", "broker", "worker"),
}


def _callgrind(out: Path) -> list[str]:
    """Run a process under callgrind, counting nothing until told to (callgrind_control -i on)."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _summary(path: Path) -> int:
    """The instructions a callgrind output file counted."""
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {path}")


def measure(system: str, role: str, calls: int, directory: Path) -> float:
    """Instructions per blocking call of ``role`` in ``system`` ("process", "thread" or "raw")."""
    if role == "worker" and system != "raw":
        # A worker is forked by its node, and callgrind_control does not reach a forked process: its whole
        # life is counted (from the fork to its exit), in a run of 2N calls and one of N, and subtracted.
        return (_run(system, role, 2 * calls, directory) - _run(system, role, calls, directory)) / calls
    return _run(system, role, calls, directory) / calls


def _run(system: str, role: str, calls: int, directory: Path) -> int:
    """Instructions ``role`` executed over ``calls`` blocking calls after the warm-up (a node's worker: in all)."""
    out = directory / f"callgrind-{system}-{role}-{calls}"
    python = [sys.executable, "-m"]
    forked = role == "worker" and system != "raw"

    def prefix(of: str) -> list[str]:
        if forked:
            return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *python] if of == "node" else python
        return [*_callgrind(out), *python] if of == role else python

    processes: list[Process] = []
    client: ClientProcess | None = None
    target: list[int] = []
    try:
        if system == "raw":
            frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            broker_args = ["bench.raw", "broker", frontend, backend]
            processes.append(Process([*prefix("broker"), *broker_args], log_path(directory, "raw-broker")))
            processes.append(Process([*prefix("worker"), "bench.raw", "worker", backend], log_path(directory, "raw-worker")))
            endpoint = frontend
        else:
            endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            broker_args = ["zerotask.broker", "--bind", endpoint, "--publish", publish, "--store", "memory"]
            processes.append(Process([*prefix("broker"), *broker_args], log_path(directory, "broker"), leader_first=True))
            wait_for(lambda: _answers(endpoint), 120, "the broker to answer", interval_s=0.2)
            node_args = ["zerotask.node", TASKS_MODULE, "--broker", endpoint, "--workers", "1", "--pool", system]
            processes.append(Process([*prefix("node"), *node_args], log_path(directory, "node"), leader_first=True))
            wait_for(lambda: len(info(endpoint, timeout_s=5)["nodes"]) == 1, 120, "the node to connect", interval_s=0.2)
        kind = "raw" if system == "raw" else "zerotask"
        client = ClientProcess(kind, endpoint, directory, f"{system}-{role}", prefix=prefix("client"))
        pids = {"client": client.pid, "broker": processes[0].pid, "node": processes[-1].pid, "worker": processes[-1].pid}

        def counting() -> cpu.Roles:  # after the warm-up, before the timed calls
            if forked:
                target.extend(_children(pids["node"]))
            else:
                target.append(pids[role])
                _control("-i", "on", str(pids[role]))
            return {}

        config = Config(
            tasks=0,
            celery_tasks=0,
            calls=calls,
            warmup=200,
            window=1,
            raw_credit=1,
            drain_s=0.0,
            timeout_s=600.0,
            workdir=directory,
            redis_url=None,
        )
        latency = client.latency(calls, config, counting)
        assert latency.calls_ok, "a wrong answer"
        if not forked:
            _control("-d", str(target[0]))
            time.sleep(0.2)  # the dump is written by the process itself
            return _summary(Path(f"{out}.{target[0]}.1"))
    finally:
        if client is not None:
            client.stop()
        for process in reversed(processes):
            process.stop()
    return _summary(Path(f"{out}.{target[0]}"))  # written as the worker exited


def _answers(endpoint: str) -> bool:
    try:
        info(endpoint, timeout_s=2)
    except TimeoutError:
        return False
    return True


def table(counts: dict[tuple[str, str], float], pools: Sequence[str]) -> str:
    header = "| process | " + " | ".join(f"zerotask, {pool} pool" for pool in pools) + " | raw pyzmq ceiling |"
    lines = [header, "| --- |" + " ---: |" * (len(pools) + 1)]
    raw_total = sum(counts[("raw", role)] for role in ROLES["raw"])
    for role in ("client", "broker", "node", "worker"):
        cells = [f"{counts[(pool, role)]:,.0f}" if (pool, role) in counts else "—" for pool in pools]
        raw = f"{counts[('raw', role)]:,.0f}" if ("raw", role) in counts else "—"
        lines.append(f"| {role} | " + " | ".join(cells) + f" | {raw} |")
    totals = [sum(counts[(pool, role)] for role in ROLES[pool]) for pool in pools]
    cells = [f"{total:,.0f} ({total / raw_total:.2f}× raw)" for total in totals]
    lines.append("| all | " + " | ".join(cells) + f" | {raw_total:,.0f} |")
    return "\n".join(lines)


def _pools(text: str) -> list[str]:
    pools = [pool for pool in text.split(",") if pool]
    if not pools or any(pool not in ("process", "thread") for pool in pools):
        raise argparse.ArgumentTypeError("process, thread, or both")
    return pools


def main(argv: list[str] | None = None, say: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pool", type=_pools, default=["process", "thread"], help="process, thread, or both (both)")
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("python -m bench.instructions needs valgrind (apt-get install valgrind)")
    counts: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="zt-instructions-") as workdir:
        for system in [*options.pool, "raw"]:
            for role in ROLES[system]:
                counts[(system, role)] = measure(system, role, options.calls, Path(workdir))
                say(f"    {system} {role}: {counts[(system, role)]:,.0f} instructions per call")
    say(table(counts, options.pool))
    command = f"python -m bench.instructions --calls {options.calls} --pool {','.join(options.pool)}"
    say(f"\n- `{command}`: instructions per blocking add(1, 2), counted by callgrind, one process at a time.")


if __name__ == "__main__":
    main()
