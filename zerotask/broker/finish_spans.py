"""The finish of a traced task as an OpenTelemetry span, in the broker: a hook, installed only when
OpenTelemetry is (zerotask.tracing), so it costs nothing otherwise. Submit and run spans are made by the
client and the worker; this one marks when and how the broker recorded the outcome."""

from __future__ import annotations

from zerotask import tracing
from zerotask.broker.hooks import Hooks
from zerotask.store import TaskRecord


class FinishSpans(Hooks):
    def after_finish(self, record: TaskRecord) -> None:
        traceparent = record.options.get("traceparent")
        if isinstance(traceparent, str):
            tracing.finished(record.method, traceparent, record.state)
