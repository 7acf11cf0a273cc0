"""A periodic task for tests/test_periodic.py (`zerotask node tests.periodic_tasks`): kept apart from
tests/tasks.py, or every node the other tests start would tick."""

from __future__ import annotations

import os
import time

from zerotask import task


@task(every=0.5)
def tick() -> float:
    """Append the time it ran to the file ZEROTASK_TEST_TICKS names."""
    now = time.time()
    with open(os.environ["ZEROTASK_TEST_TICKS"], "a") as ticks:
        ticks.write(f"{now}\n")
    return now
