"""The seed's demo tasks, served by ``python -m zerotask.node`` when it is given no task module."""

from __future__ import annotations

from zerotask.task import task


@task
def add(a: float, b: float) -> float:
    return a + b


@task
def subtract(minuend: float, subtrahend: float) -> float:
    return minuend - subtrahend
