"""Annotated, documented tasks whose descriptions rpc.discover must show (tests/test_discovery.py)."""

from __future__ import annotations

from typing import Any

from zerotask import task


@task
def scale(values: list[float], factor: float = 2.0, *, label: str | None = None) -> dict[str, Any]:
    """Multiply every value by a factor.

    Returns the scaled values under "values", and the label if one was given.
    """
    return {"values": [value * factor for value in values], "label": label}


@task
def plain(a, b=1):  # type: ignore[no-untyped-def]
    return a


@task(name="discovery.flag")
def flag(on: bool) -> None:
    """Set nothing."""
