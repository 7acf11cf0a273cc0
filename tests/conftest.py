"""Fixtures that start real brokers and nodes as processes, and stop every one of them afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from zerotask.testing import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on the memory store; the test starts the broker and the nodes it needs."""
    with Cluster(store="memory", directory=tmp_path) as made:
        yield made


@pytest.fixture
def sqlite_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on an SQLite file in the test's directory."""
    with Cluster(store="tasks.db", directory=tmp_path) as made:
        yield made


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    """A broker and one node with two workers serving the test tasks (tests/tasks.py)."""
    cluster.start_broker()
    cluster.start_node("tests.tasks", workers=2)
    return cluster
