"""Tracing: a W3C ``traceparent`` carried from the client that submits a task to the code that runs it.

A traceparent (https://www.w3.org/TR/trace-context/) is ``00-<trace id>-<parent id>-<flags>``: 32 and 16
lowercase hexadecimal digits (neither all zeros) and 2 for the flags. The client sends the current one with
each task (the ``traceparent`` param of zerotask.broker.submit and call); the broker stores it with the task
and the node receives it in the task object; the worker makes a child of it (same trace id, a new span id)
current while the task runs, where task code reads it with :func:`current_traceparent`.

Where the current traceparent comes from, on the client: :func:`traced` (or the same context variable set
by a running task, for the tasks it submits), else, when ``opentelemetry-api`` is installed, the active
OpenTelemetry span if it is recording: the client then records a span ``zerotask.submit <task>`` under it,
and the worker runs the task in a span ``zerotask.run <task>`` under that.

With no traceparent anywhere, the cost per task is one context variable read on the client (plus, with
OpenTelemetry installed, one look at its current span) and one dict lookup in the worker.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_CURRENT: ContextVar[str | None] = ContextVar("zerotask_traceparent", default=None)
_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_UNRESOLVED: Any = object()
_otel: Any = _UNRESOLVED  # the opentelemetry.trace module once looked for (None: not installed)
_otel_context: Callable[[], Any] = dict  # OpenTelemetry's current context: empty (falsy) when no span is active


def current_traceparent() -> str | None:
    """The traceparent current here: inside a task, a child of the one its caller sent; None if none."""
    return _CURRENT.get()


def is_valid(traceparent: object) -> bool:
    """Whether ``traceparent`` is a W3C traceparent of version 00 with a trace id and a parent id that
    are not all zeros."""
    if type(traceparent) is not str:
        return False
    match = _FORMAT.fullmatch(traceparent)
    return match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN


def child(traceparent: str) -> str:
    """A traceparent with the trace id and flags of ``traceparent`` (a valid one) and a new span id."""
    return f"{traceparent[:36]}{_new_span_id():016x}{traceparent[52:]}"


def _new_span_id() -> int:
    # The random module reseeds in a forked child, so workers do not repeat each other.
    while True:
        span_id = random.getrandbits(64)
        if span_id:
            return span_id


@contextmanager
def traced(traceparent: str) -> Iterator[str]:
    """Make ``traceparent`` current in this context (thread, asyncio task) for the block: the tasks
    submitted in it carry it. Raises ValueError if it is not a valid traceparent (see :func:`is_valid`)."""
    if not is_valid(traceparent):
        raise ValueError(f"not a W3C traceparent: {traceparent!r}")
    token = _CURRENT.set(traceparent)
    try:
        yield traceparent
    finally:
        _CURRENT.reset(token)


def outgoing(method: str) -> str | None:
    """The traceparent to send with a call of task ``method``, or None. With none set by :func:`traced`
    and an OpenTelemetry span recording, the traceparent is that of a ``zerotask.submit <method>`` span,
    recorded as a child of it."""
    value = _CURRENT.get()
    if value is not None:
        return value
    otel = _otel if _otel is not _UNRESOLVED else _find_otel()
    if otel is None or not _otel_context() or not otel.get_current_span().is_recording():
        return None
    with otel.get_tracer(__name__).start_as_current_span(f"zerotask.submit {method}", kind=otel.SpanKind.PRODUCER) as span:
        return _format(span.get_span_context())


def in_trace(traceparent: str, run: Callable[Concatenate[str, P], R]) -> Callable[Concatenate[str, P], R]:
    """``run`` (called with a task name first), made to run under a child of ``traceparent``: the child
    is current meanwhile, and, with OpenTelemetry installed, the call is a span ``zerotask.run <name>``
    whose parent is ``traceparent``. An invalid traceparent is ignored."""

    def traced_run(name: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with running(traceparent, name):
            return run(name, *args, **kwargs)

    return traced_run


@contextmanager
def running(traceparent: str, name: str) -> Iterator[None]:
    """The block runs task ``name`` under a child of ``traceparent``, as :func:`in_trace` says: the form
    for an ``async def`` task, whose block spans its ``await`` (in the asyncio task running it)."""
    if not is_valid(traceparent):  # the broker checks; a node trusts no more than it must
        yield
        return
    otel = _otel if _otel is not _UNRESOLVED else _find_otel()
    if otel is None:
        token = _CURRENT.set(child(traceparent))
        try:
            yield
        finally:
            _CURRENT.reset(token)
        return
    parent = otel.set_span_in_context(otel.NonRecordingSpan(_parse(otel, traceparent)))
    with otel.get_tracer(__name__).start_as_current_span(
        f"zerotask.run {name}", context=parent, kind=otel.SpanKind.CONSUMER
    ) as span:
        # Without an OpenTelemetry SDK the span is not recording and has its parent's id: make one up.
        token = _CURRENT.set(_format(span.get_span_context()) if span.is_recording() else child(traceparent))
        try:
            yield
        finally:
            _CURRENT.reset(token)


def finished(name: str, traceparent: str, state: str) -> None:
    """With OpenTelemetry installed, record that a task ended: a span ``zerotask.finish <name>`` whose
    parent is its ``traceparent``, with the final state as ``zerotask.state``. Nothing otherwise."""
    otel = _otel if _otel is not _UNRESOLVED else _find_otel()
    if otel is None or not is_valid(traceparent):
        return
    parent = otel.set_span_in_context(otel.NonRecordingSpan(_parse(otel, traceparent)))
    span = otel.get_tracer(__name__).start_span(f"zerotask.finish {name}", context=parent, kind=otel.SpanKind.INTERNAL)
    span.set_attribute("zerotask.state", state)
    span.end()


def available() -> bool:
    """Whether OpenTelemetry is installed (looked for once)."""
    return (_otel if _otel is not _UNRESOLVED else _find_otel()) is not None


def _find_otel() -> Any:
    """The opentelemetry.trace module, or None; looked for once, on first use rather than at import."""
    global _otel, _otel_context
    try:
        from opentelemetry import context, trace
    except ImportError:
        _otel = None
        return None
    # The context variable behind context.get_current(), read directly: a tenth of the cost, and most calls
    # happen outside any span. Should OpenTelemetry keep its context elsewhere, the public call does.
    variable = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    _otel_context = variable.get if isinstance(variable, ContextVar) else context.get_current
    _otel = trace
    return _otel


def _format(context: Any) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parse(otel: Any, traceparent: str) -> Any:
    return otel.SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=otel.TraceFlags(int(traceparent[53:55], 16)),
    )
