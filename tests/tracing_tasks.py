"""Tasks the tracing tests run on real nodes (`zerotask node tests.tracing_tasks`)."""

from __future__ import annotations

from zerotask import task, tracing


@task(name="tracing.traceparent")
def traceparent() -> str | None:
    return tracing.current_traceparent()
