"""Tasks for the dashboard's browser tests (`zerotask node tests.dashboard_tasks`)."""

from __future__ import annotations

import os

from zerotask import task


@task
def fails_once(flag_path: str) -> str:
    """Fails (no retries) the first time, when ``flag_path`` does not exist yet; succeeds after."""
    if not os.path.exists(flag_path):
        open(flag_path, "w").close()
        raise ValueError("the first run fails")
    return "second time lucky"
