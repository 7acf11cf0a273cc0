"""@task(unique_for=...) with a real broker and node: a second call with the same arguments, while the
first is queued or running, gets the first task."""

from __future__ import annotations

from zerotask.testing import Cluster


def test_a_unique_task_runs_once_for_calls_with_the_same_arguments() -> None:
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=2)
        client = cluster.client()
        first = client.apply_async("unique_sleep", (0.5,))
        second = client.apply_async("unique_sleep", (0.5,))
        other = client.apply_async("unique_sleep", (0.5, "other"))
        assert second == first and other != first
        assert client.result(first) == 0.5
        assert client.apply_async("unique_sleep", (0.5,)) != first  # it ended: the next call is new


def test_an_async_client_waiting_on_a_unique_twin_gets_the_first_tasks_outcome() -> None:
    from zerotask.client import AsyncClient

    with Cluster() as cluster, AsyncClient(cluster.endpoint) as client:
        cluster.start_broker()
        cluster.start_node("tests.tasks", workers=2)
        first = client.apply_async("unique_sleep", (0.3, "async"))
        twin = client.apply_async("unique_sleep", (0.3, "async"))
        assert first.result(timeout=10) == 0.3
        assert twin.result(timeout=10) == 0.3
