"""Tasks for tests/test_inspect.py (`zerotask node tests.inspect_tasks`)."""

from __future__ import annotations

import os

from zerotask import task


@task
def fails_once(path: str) -> str:
    """Fails (no retries) the first time, while ``path`` does not exist; succeeds after."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise ValueError("first run fails")
    return "ok"


@task
def double(value: int) -> int:
    return value * 2
