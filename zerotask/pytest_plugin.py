"""The zerotask pytest plugin, registered by the ``pytest11`` entry point: installing zerotask is enough.

- ``zerotask_broker``: a broker process on free ports, on the memory store (``@pytest.mark.zerotask(
  store="sqlite")`` for an SQLite file); a :class:`zerotask.testing.Cluster` with ``.endpoint``,
  ``.publish``, ``.info()`` and ``.directory`` (where the logs are).
- ``zerotask_node``: ``zerotask_node("myapp.tasks", workers=2)`` starts a node process serving those
  modules (importable from the current directory or PYTHONPATH), connected to that broker, and returns
  its :class:`zerotask.testing.ManagedProcess` once the broker counts it.
- ``zerotask_client`` and ``zerotask_async_client``: a Client and an AsyncClient on that broker.
- ``zerotask_eager``: a :class:`zerotask.eager.EagerClient`, which runs tasks at once in the test's
  process: no broker, no node.

Every process a fixture starts is stopped when its test ends, passed or failed, and every wait is
bounded and scaled by ZEROTASK_TEST_TIMEOUT_SCALE. Loading the plugin only defines the fixtures and the
marker: zerotask's modules are imported when a test first asks for a fixture, so a project that does not
use them (or measures zerotask's own coverage) pays nothing at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from zerotask.client import AsyncClient, Client
    from zerotask.eager import EagerClient
    from zerotask.testing import Cluster, ManagedProcess

# What @pytest.mark.zerotask(store=...) accepts, and what Cluster is given for it.
_STORES = {"memory": "memory", "sqlite": "zerotask.db"}


class NodeFactory(Protocol):
    def __call__(self, *modules: str, workers: int = 1, extra: list[str] | None = None) -> ManagedProcess:
        """Start a node serving ``modules`` with ``workers`` worker processes (``extra``: more command-line
        arguments of ``zerotask node``); return once the broker counts it. Raises RuntimeError if it exits
        first, TimeoutError if it does not connect in time."""
        ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "zerotask(store='memory', broker_args=()): how zerotask_broker runs its broker: store 'memory' or "
        "'sqlite' (a file in the broker's directory), broker_args more `zerotask broker` arguments",
    )


@pytest.fixture
def zerotask_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running broker on free ports, stopped (with every node started on it) after the test."""
    from zerotask.testing import Cluster

    marker = request.node.get_closest_marker("zerotask")
    options = dict(marker.kwargs) if marker is not None else {}
    store = options.pop("store", "memory")
    broker_args = [str(argument) for argument in options.pop("broker_args", ())]
    if store not in _STORES or options:
        given = marker.kwargs if marker is not None else {}
        pytest.fail(f"@pytest.mark.zerotask takes store= (one of {sorted(_STORES)}) and broker_args=, not {given}", pytrace=False)
    with Cluster(store=_STORES[store], directory=tmp_path_factory.mktemp("zerotask"), broker_args=broker_args) as cluster:
        cluster.start_broker()
        yield cluster


@pytest.fixture
def zerotask_node(zerotask_broker: Cluster) -> NodeFactory:
    """A factory of node processes connected to ``zerotask_broker``; each is stopped after the test."""

    def start(*modules: str, workers: int = 1, extra: list[str] | None = None) -> ManagedProcess:
        return zerotask_broker.start_node(*modules, workers=workers, extra=extra)

    return start


@pytest.fixture
def zerotask_client(zerotask_broker: Cluster) -> Client:
    """A Client on ``zerotask_broker`` (calls wait at most 30 s, scaled), closed after the test."""
    return zerotask_broker.client()


@pytest.fixture
def zerotask_async_client(zerotask_broker: Cluster) -> Iterator[AsyncClient]:
    """An AsyncClient on ``zerotask_broker`` (control calls wait at most 30 s, scaled), closed after the test."""
    from zerotask.client import AsyncClient
    from zerotask.testing import scaled

    with AsyncClient(zerotask_broker.endpoint, timeout=scaled(30), **zerotask_broker.peer("client")) as client:
        yield client


@pytest.fixture
def zerotask_eager() -> Iterator[EagerClient]:
    """An EagerClient on the tasks ``@task`` registered (import their modules in the test's file)."""
    from zerotask.eager import EagerClient

    with EagerClient() as client:
        yield client
