"""The zerotask tasks the benchmark runs (`zerotask node bench.tasks`)."""

from __future__ import annotations

from zerotask import task


@task
def add(x: int, y: int) -> int:
    return x + y
