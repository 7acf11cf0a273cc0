"""What the blocking Client and the AsyncClient share: the control API both offer, the task ids they
choose, the params of a task call or a workflow, and ``client.a.b.c(...)`` attribute calls."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from zerotask import tracing, wire
from zerotask.canvas import Canvas, Sig

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def liveness(given: int | None, brokers: int) -> int:
    """How many silent heartbeats a client waits before it gives up on its broker: ``given``, else 5
    with one broker and 2 with several (when there is somewhere else to go, it is worth going sooner: a
    live broker answers a ping within milliseconds, so two silent heartbeats mean it is gone or cut off)."""
    if given is not None:
        return given
    return 2 if brokers > 1 else 5


class ControlAPI(Protocol):
    """The control calls of Client and AsyncClient: same names, same parameters. ``timeout`` (seconds)
    bounds the wait; None means the client's own ``timeout`` (None there: no limit)."""

    @property
    def endpoint(self) -> str:
        """The endpoint of the broker the client uses now."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run task ``method``: its result (Client), or its handle (AsyncClient)."""

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Queue task ``method``: its id (Client), or its handle (AsyncClient)."""

    def apply_async(
        self,
        method: str | Canvas,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        time_limit: float | None = None,
    ) -> Any:
        """Queue task ``method`` with delivery options, as Celery's: run it ``countdown`` seconds from
        now or at ``eta`` (a Unix time or an aware datetime), in ``queue``, with ``priority`` (0 to 9,
        higher first), under ``task_id`` (a task with that id already is returned instead), with a
        ``time_limit`` in seconds. Its id (Client), or its handle (AsyncClient).

        ``method`` may be a workflow (:mod:`zerotask.canvas`): a ``sig`` is a task, with its options as
        defaults; a chain, group or chord starts a workflow, under ``task_id`` if given, and takes no
        other argument (its delivery options are its sigs')."""

    def status(self, task_id: str, timeout: float | None = None) -> str:
        """SCHEDULED, QUEUED, ASSIGNED, RUNNING, RETRY, FINISHED, FAILED or REVOKED; raises UnknownTask."""

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the task's result; raises its error, or TaskTimeout."""

    def progress(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """What the running task last reported with ``report_progress``: ``{"done", "total", "info"}``,
        or None (it reported nothing, or it is not running)."""

    def revoke(self, task_id: str, timeout: float | None = None) -> str:
        """Revoke the task; returns its state afterwards."""

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's description of itself."""


# Task ids are a keyed BLAKE2b hash (a pseudorandom function) of a counter, under 32 random bytes per
# process: unique, and no id tells anything about another, as with a uuid4 each, but without a system
# call per id. The key is drawn on first use, not at import, and again in a forked child.
_ID_COUNTER = itertools.count(1)
_ID_HASH: hashlib.blake2b | None = None  # the hash state once keyed; each id continues a copy
_ID_FORK_HOOK = False


def new_task_id() -> str:
    """A fresh task id: 32 lowercase hexadecimal characters, unique across clients, and unpredictable
    from any other id (see above)."""
    digest = (_ID_HASH or _draw_id_key()).copy()
    digest.update(next(_ID_COUNTER).to_bytes(8, "little"))
    return digest.hexdigest()


def _draw_id_key() -> hashlib.blake2b:
    global _ID_HASH, _ID_FORK_HOOK
    if not _ID_FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_id_key)  # or parent and child would repeat each other
        _ID_FORK_HOOK = True
    _ID_HASH = hashlib.blake2b(key=os.urandom(32), digest_size=16)
    return _ID_HASH


def _forget_id_key() -> None:
    global _ID_HASH
    _ID_HASH = None


def call_params(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], time_limit: float | None = None) -> dict[str, Any]:
    """The params of zerotask.broker.submit / call for one task. The client names the task, so that a
    call it repeats (after a lost reply, or a broker restart) finds the same task instead of a new one."""
    params: dict[str, Any] = {"method": method, "args": list(args), "kwargs": kwargs, "task_id": new_task_id()}
    if time_limit is not None:
        params["time_limit_s"] = time_limit
    traceparent = tracing.outgoing(method)
    if traceparent is not None:
        params["traceparent"] = traceparent
    return params


def async_params(
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    countdown: float | None,
    eta: float | datetime | None,
    queue: str | None,
    priority: int | None,
    task_id: str | None,
    time_limit: float | None,
) -> dict[str, Any]:
    """The params of zerotask.broker.submit for :meth:`ControlAPI.apply_async` (the broker checks them)."""
    params = call_params(method, tuple(args), dict(kwargs or {}), time_limit)
    if task_id is not None:
        params["task_id"] = task_id
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            raise ValueError("eta must be an aware datetime (with a timezone), or a Unix time")
        eta = eta.timestamp()
    for name, value in (("countdown_s", countdown), ("eta", eta), ("queue", queue), ("priority", priority)):
        if value is not None:
            params[name] = value
    return params


def apply_request(
    target: str | Canvas,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    countdown: float | None,
    eta: float | datetime | None,
    queue: str | None,
    priority: int | None,
    task_id: str | None,
    time_limit: float | None,
    default_time_limit: float | None,
) -> tuple[str, dict[str, Any]]:
    """The broker method and its params for :meth:`ControlAPI.apply_async`: zerotask.broker.submit for a
    task (a ``sig`` is one, its options the defaults), zerotask.broker.workflow for a chain, group or chord."""
    if isinstance(target, Sig):
        options = target.options
        queue = options.get("queue") if queue is None else queue
        priority = options.get("priority") if priority is None else priority
        time_limit = options.get("time_limit_s") if time_limit is None else time_limit
        args, kwargs, target = (*target.args, *args), {**target.kwargs, **(kwargs or {})}, target.method
    if isinstance(target, Canvas):
        if args or kwargs or any(value is not None for value in (countdown, eta, queue, priority, time_limit)):
            raise ValueError("a workflow takes no arguments or delivery options: give them to its sigs")
        return wire.WORKFLOW, {"workflow": target.to_json(), "workflow_id": task_id or new_task_id()}
    limit = default_time_limit if time_limit is None else time_limit
    return wire.SUBMIT, async_params(target, args, kwargs, countdown, eta, queue, priority, task_id, limit)


def reachable(bound: str, via: str) -> str:
    """The address of an endpoint the broker bound to a wildcard (``tcp://*:5556`` reads back as
    ``tcp://0.0.0.0:5556``), as seen from a client that reached the broker at ``via``."""
    for wildcard in ("0.0.0.0", "*", "[::]"):
        prefix = f"tcp://{wildcard}:"
        if bound.startswith(prefix) and via.startswith("tcp://"):
            host = via[len("tcp://") :].rsplit(":", 1)[0]
            return f"tcp://{host}:{bound[len(prefix) :]}"
    return bound


class TaskMethod:
    """``client.a.b.c(...)``: the task named ``a.b.c``, called through ``client.call``."""

    def __init__(self, client: ControlAPI, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, name: str) -> TaskMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return TaskMethod(self._client, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self._name} via {self._client.endpoint}>"
