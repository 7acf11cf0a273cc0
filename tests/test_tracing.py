"""Tracing: a W3C traceparent travels from the client, through the broker, to the task that runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from zerotask import tracing
from zerotask.broker.params import read_task_call
from zerotask.client.calls import call_params
from zerotask.exceptions import InvalidParams
from zerotask.testing import Cluster

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    return version, trace_id, span_id, flags


@pytest.mark.parametrize("value", [VALID, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"])
def test_valid_traceparent_is_accepted(value: str) -> None:
    assert tracing.is_valid(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # trace id all zeros
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # parent id all zeros
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
        VALID + "\n",
        VALID + "-extra",
        None,
        42,
    ],
)
def test_invalid_traceparent_is_refused(value: object) -> None:
    assert not tracing.is_valid(value)
    if isinstance(value, str):
        with pytest.raises(ValueError), tracing.traced(value):
            pass


def test_child_keeps_trace_id_and_flags_with_a_new_span_id() -> None:
    children = {tracing.child(VALID) for _ in range(100)}
    assert len(children) == 100
    for made in children:
        assert tracing.is_valid(made)
        version, trace_id, span_id, flags = parts(made)
        assert (version, trace_id, flags) == ("00", parts(VALID)[1], "01")
        assert span_id != parts(VALID)[2]


def test_traced_sets_the_current_traceparent_for_the_block_only() -> None:
    assert tracing.current_traceparent() is None
    with tracing.traced(VALID) as value:
        assert value == VALID == tracing.current_traceparent()
    assert tracing.current_traceparent() is None


def test_call_params_carry_the_current_traceparent_only_when_there_is_one() -> None:
    assert "traceparent" not in call_params("add", (1, 2), {})
    with tracing.traced(VALID):
        assert call_params("add", (1, 2), {})["traceparent"] == VALID


def test_broker_puts_the_traceparent_in_the_task_options() -> None:
    assert read_task_call({"method": "add", "args": [1, 2]})[4] is None
    assert read_task_call({"method": "add", "traceparent": VALID})[4] == {"traceparent": VALID}
    assert read_task_call(["add", [], {}, None, None, 5, VALID])[4] == {"time_limit_s": 5, "traceparent": VALID}
    for bad in ("00-abc-def-01", 7, ["x"]):
        with pytest.raises(InvalidParams):
            read_task_call({"method": "add", "traceparent": bad})


def test_worker_runs_the_task_under_a_child_traceparent() -> None:
    seen: list[str | None] = []

    def run(name: str, value: int) -> int:
        seen.append(tracing.current_traceparent())
        return value + 1

    assert tracing.in_trace(VALID, run)("t", 1) == 2
    assert tracing.current_traceparent() is None
    assert seen[0] is not None and parts(seen[0])[1] == parts(VALID)[1] and parts(seen[0])[2] != parts(VALID)[2]
    assert tracing.in_trace("garbage", run)("t", 1) == 2  # a bad traceparent never fails the task
    assert seen[1] is None


@pytest.fixture
def traced_cluster(cluster: Cluster) -> Cluster:
    cluster.start_broker()
    cluster.start_node("tests.tracing_tasks", workers=1)
    return cluster


def test_task_sees_the_clients_trace_id_with_its_own_span_id(traced_cluster: Cluster) -> None:
    client = traced_cluster.client()
    assert client.call("tracing.traceparent") is None
    with tracing.traced(VALID):
        inside = client.call("tracing.traceparent")
        submitted = client.result(client.submit("tracing.traceparent"), timeout=30)
    for seen in (inside, submitted):
        assert tracing.is_valid(seen)
        assert parts(seen)[1] == parts(VALID)[1]
        assert parts(seen)[2] != parts(VALID)[2]
    assert inside != submitted


def test_broker_refuses_an_invalid_traceparent(traced_cluster: Cluster) -> None:
    client = traced_cluster.client()
    bad = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
    with pytest.raises(InvalidParams):
        client.rpc("zerotask.broker.submit", {"method": "tracing.traceparent", "traceparent": bad}, 30)


@pytest.fixture
def spans() -> Iterator[Any]:
    """An in-memory exporter on this process's OpenTelemetry tracer provider (set once per process)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    exporter.clear()
    processor.shutdown()


def test_opentelemetry_run_span_is_a_child_of_the_traceparent(spans: Any) -> None:
    from opentelemetry import trace

    seen: list[str | None] = []
    tracing.in_trace(VALID, lambda name: seen.append(tracing.current_traceparent()))("job")
    (run,) = [s for s in spans.get_finished_spans() if s.name == "zerotask.run job"]
    assert run.kind == trace.SpanKind.CONSUMER
    assert run.parent is not None and f"{run.parent.span_id:016x}" == parts(VALID)[2]
    assert seen == [f"00-{run.context.trace_id:032x}-{run.context.span_id:016x}-01"]


def test_opentelemetry_finish_span_marks_the_outcome_the_broker_recorded(spans: Any) -> None:
    from tests.core_helpers import assigned, connect, done
    from zerotask.broker.core import BrokerCore
    from zerotask.broker.finish_spans import FinishSpans
    from zerotask.broker.hooks import Retries, TimeLimits
    from zerotask.store import MemoryStore
    from zerotask.testing import ManualClock

    core = BrokerCore(MemoryStore(), ManualClock(), [Retries(), TimeLimits(), FinishSpans()])
    node = connect(core, b"n1", "add")
    core.submit("add", [1, 2], {}, "t1", options={"traceparent": VALID})
    core.submit("add", [1, 2], {}, "t2")  # not traced: no span
    assert assigned(core) == {b"n1": ["t1", "t2"]}
    core.report(node, [done("t1", 3), done("t2", 3)])
    (finish,) = [s for s in spans.get_finished_spans() if s.name == "zerotask.finish add"]
    assert finish.parent is not None and f"{finish.parent.span_id:016x}" == parts(VALID)[2]
    assert f"{finish.context.trace_id:032x}" == parts(VALID)[1]
    assert finish.attributes is not None and finish.attributes["zerotask.state"] == "FINISHED"


def test_opentelemetry_submit_span_carries_its_trace_to_the_task(spans: Any, traced_cluster: Cluster) -> None:
    from opentelemetry import trace

    client = traced_cluster.client()
    with trace.get_tracer("tests").start_as_current_span("caller") as caller:
        seen = client.call("tracing.traceparent")
    (submit,) = [s for s in spans.get_finished_spans() if s.name == "zerotask.submit tracing.traceparent"]
    assert submit.kind == trace.SpanKind.PRODUCER
    assert submit.parent is not None and submit.parent.span_id == caller.get_span_context().span_id
    assert tracing.is_valid(seen)
    assert parts(seen)[1] == f"{submit.context.trace_id:032x}"
    assert parts(seen)[2] != f"{submit.context.span_id:016x}"
    assert "traceparent" not in call_params("add", (), {})  # no span recording: nothing sent
