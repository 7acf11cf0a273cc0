"""A task that leaves a trace of each run, for tests/test_failover.py: how many times did it run?"""

from __future__ import annotations

import time
from pathlib import Path

from zerotask import task


@task
def traced_sleep(path: str, seconds: float) -> float:
    """Append "start" to ``path``, sleep, append "end"; returns ``seconds``."""
    with Path(path).open("a") as trace:
        trace.write("start\n")
    time.sleep(seconds)
    with Path(path).open("a") as trace:
        trace.write("end\n")
    return seconds
