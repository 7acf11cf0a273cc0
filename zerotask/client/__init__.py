"""Clients: :class:`Client` calls a task and waits (``blocking.py``); :class:`AsyncClient` submits many
and has their outcomes pushed (``aio.py``, with ``connection.py`` and ``handle.py``); both offer the same
control API (``calls.py``). :class:`AsyncMapReduce` is in ``mapreduce.py``. ``python -m zerotask.client``
runs the seed's demo calls."""

from zerotask.client.aio import AsyncClient
from zerotask.client.blocking import Client
from zerotask.client.calls import DEFAULT_ENDPOINT, ControlAPI, call_params, new_task_id, reachable
from zerotask.client.handle import TaskHandle

__all__ = ["DEFAULT_ENDPOINT", "AsyncClient", "Client", "ControlAPI", "TaskHandle", "call_params", "new_task_id", "reachable"]
