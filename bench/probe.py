"""Timing probes for ``python -m bench.trace``, installed by monkeypatching; zerotask itself is untouched.

:func:`install` wraps, in the process it runs in, the calls a task passes through in one role (client,
broker, node; a node's workers inherit the node's probes when they are forked and become "worker").
Each probe appends ``(name, perf_counter_ns(), what)`` to a list in memory: ``what`` is whatever says
which task it was about (the payload sent or received, the task record, the outcomes...), kept by
reference and turned into task ids only when the list is written out (:func:`dump`, at exit), so that a
probe costs one clock read and one append. Nothing is installed unless :func:`install` is called, so
this costs nothing when tracing is off.

perf_counter_ns is CLOCK_MONOTONIC on Linux: one clock for every process on the machine, so stamps
taken in different processes can be compared.
"""

from __future__ import annotations

import atexit
import importlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Stamp = tuple[str, int, Any]

_stamps: list[Stamp] = []
_now = time.perf_counter_ns
_role = ""
_directory = Path()
_missing: list[str] = []  # probes whose target was not found: the code moved on
_MAX_STAMPS = 2_000_000  # a bound, so that a long-running traced process cannot grow for ever


def install(role: str, directory: Path) -> None:
    """Install the probes of ``role`` ("client", "broker" or "node") in this process; the stamps are
    written to ``directory`` at exit (a worker's when its pipe closes)."""
    global _role, _directory
    _role, _directory = role, directory
    {"client": _client, "broker": _broker, "node": _node}[role]()
    atexit.register(dump)
    if role == "node":
        os.register_at_fork(after_in_child=_become_worker)


def mark(name: str) -> None:
    """A stamp of one's own: ``mark("timed")`` says the timed calls start here."""
    _stamps.append((f"mark.{name}", _now(), None))


def dump() -> None:
    """Write this process's stamps to DIRECTORY/ROLE-PID.json, after those an earlier dump wrote there."""
    stamps = [(name, t, _keys(what)) for name, t, what in _stamps]
    _stamps.clear()
    path = _directory / f"{_role}-{os.getpid()}.json"
    if path.exists():
        stamps = [tuple(stamp) for stamp in orjson.loads(path.read_bytes())["stamps"]] + stamps
    path.write_bytes(orjson.dumps({"role": _role, "pid": os.getpid(), "missing": _missing, "stamps": stamps}))


def cost_ns() -> float:
    """What one probe adds to a call on this machine (a wrapper, a clock read, an append), measured on a
    wrapped no-op in the calling process (the best of a few rounds)."""

    def nothing(*args: Any) -> None:
        return None

    wrapped, rounds = _before("calibrate")(nothing), 20_000
    best = float("inf")
    for _ in range(5):
        started = _now()
        for _ in range(rounds):
            wrapped(None)
        middle = _now()
        for _ in range(rounds):
            nothing(None)
        best = min(best, ((middle - started) - (_now() - middle)) / rounds)
        del _stamps[-rounds:]
    return best


def _become_worker() -> None:
    global _role
    _role = "worker"
    _stamps.clear()


# ---- what a stamp is about -------------------------------------------------------------------------

_TASK_ID = re.compile(rb'"task_id":"([^"]+)"')
_REQUEST_ID = re.compile(rb'"id":(\d+)[,}]')


def _keys(what: Any, depth: int = 0) -> list[str]:
    """The task ids (and "#N" for JSON-RPC request id N) a stamp's object names."""
    if what is None or depth > 4:
        return []
    if hasattr(what, "bytes") and not isinstance(what, bytes | bytearray):  # a zmq.Frame
        what = what.bytes
    if isinstance(what, bytes | bytearray | memoryview):
        data = bytes(what)
        found = [match.decode() for match in _TASK_ID.findall(data)]
        return found + [f"#{match.decode()}" for match in _REQUEST_ID.findall(data)]
    if isinstance(what, str):
        return [what]
    if isinstance(what, dict):
        task_id = what.get("task_id")
        return [task_id] if isinstance(task_id, str) else []
    if isinstance(what, list | tuple):
        return [key for item in what for key in _keys(item, depth + 1)]
    identity = getattr(what, "task_id", None) or getattr(what, "id", None)  # an Outcome, a TaskRecord
    return [identity] if isinstance(identity, str) else []


# ---- the wrappers --------------------------------------------------------------------------------

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _patch(target: str, wrap: Wrap, owner: Any = None) -> None:
    """Replace ``module:Class.attribute`` (or ``module:function``) with ``wrap(original)``; ``owner``, a
    class, puts the wrapper there instead (for a method it inherits). A target not found is noted."""
    module_name, _, path = target.partition(":")
    *parents, name = path.split(".")
    try:
        place: Any = importlib.import_module(module_name)
        for parent in parents:
            place = getattr(place, parent)
        original = getattr(owner if owner is not None else place, name)
    except (ImportError, AttributeError):
        _missing.append(target)
        return
    setattr(owner if owner is not None else place, name, wrap(original))


def _before(name: str, what: Callable[[tuple[Any, ...]], Any] | None = None) -> Wrap:
    """Stamp ``name`` as the call starts, about ``what(args)``."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def probe(*args: Any, **kwargs: Any) -> Any:
            if len(_stamps) < _MAX_STAMPS:
                _stamps.append((name, _now(), what(args) if what is not None else None))
            return original(*args, **kwargs)

        return probe

    return wrap


def _after(name: str, what: Callable[[Any, tuple[Any, ...]], Any] | None = None) -> Wrap:
    """Stamp ``name`` once the call returns (not if it raises), about ``what(result, args)``."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def probe(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if len(_stamps) < _MAX_STAMPS:
                _stamps.append((name, _now(), what(result, args) if what is not None else None))
            return result

        return probe

    return wrap


def _around(name: str, done: str, what: Callable[[tuple[Any, ...]], Any] | None = None) -> Wrap:
    """Stamp ``name`` as the call starts and ``done`` once it returns, both about ``what(args)``."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        return _after(done, lambda result, args: what(args) if what is not None else None)(_before(name, what)(original))

    return wrap


def _payload(args: tuple[Any, ...]) -> Any:
    return args[1]  # (socket or connection, payload, ...)


def _received(result: Any, args: tuple[Any, ...]) -> Any:
    return result


def _zmq_send_recv() -> None:
    """A DEALER's send and recv (the client's and the node's socket): pyzmq's Socket methods, and the
    Cython methods under them that zerotask.sockets calls on the hot path (``send_frame(sock, payload,
    flags)``, ``recv_frame(sock)``; ``sockets.sender`` binds send_frame when a socket is made, after this)."""
    _patch("zmq:Socket.send", _before("send", _payload))
    _patch("zmq:Socket.recv", _after("recv", _received))
    _patch("zerotask.sockets:send_frame", _before("send", _payload))
    _patch("zerotask.sockets:recv_frame", _after("recv", _received))


def _stores(methods: dict[str, Wrap]) -> None:
    """Wrap these methods in every Store class (the redis store too once there is one), on the class
    itself so that a subclass calling its base's method is stamped once."""
    import zerotask.store as stores

    try:
        importlib.import_module("zerotask.store.redis")
    except ImportError:
        pass
    pending, classes = [stores.Store], []
    while pending:  # breadth first: a class before its subclasses
        subclasses = pending.pop(0).__subclasses__()
        pending.extend(subclasses)
        classes.extend(subclasses)
    for method, wrap in methods.items():
        wrapped: set[Any] = set()  # a subclass that inherits a wrapped method is left alone
        for cls in classes:
            if getattr(cls, method, None) not in wrapped:
                _patch(f"{cls.__module__}:{cls.__name__}.{method}", wrap, owner=cls)
                wrapped.add(getattr(cls, method, None))


# ---- each role's probes --------------------------------------------------------------------------


def _client() -> None:
    _zmq_send_recv()
    _patch("zerotask.client.blocking:Client.call", _around("call", "return"))


def _broker() -> None:
    # The broker reads and writes its ROUTER frame by frame (and publishes events with the same send):
    # stamped where a message has been read whole, and where a reply starts going out.
    _patch("zerotask.broker.transport:Broker._on_message", _before("recv", lambda args: args[1]))  # (broker, frames)
    _patch("zerotask.broker.transport:Broker._send_reply", _before("send", lambda args: args[2]))  # (broker, envelope, payload)
    _patch("zerotask.jsonrpc:loads", _after("loads"))
    _patch("zerotask.broker.core:BrokerCore.submit", _before("submit"))
    _patch("zerotask.broker.core:BrokerCore.submit", _after("submitted", _received))
    _patch("zerotask.broker.core:BrokerCore.assign", _before("assign"))
    _patch("zerotask.broker.core:BrokerCore.assign", _after("assigned", _received))
    _patch(
        "zerotask.broker.core:BrokerCore.report", _around("report", "reported", lambda args: args[2])
    )  # (core, node, outcomes)
    _stores(
        {
            "add": _around("store.add", "store.added", _payload),  # a task queued, or (the direct path) held:
            "add_held": _around("store.add", "store.added", _payload),
            "finish_many": _around("store.finish_many", "store.finished_many", _payload),
            "flush": _around("store.flush", "store.flushed"),
        }
    )


def _node() -> None:
    """The node's socket and pipes, and (inherited by every worker forked later) the worker's side; or,
    in a thread pool, the hand-off and the task's run in the node's process."""
    _zmq_send_recv()
    _patch("zerotask.node.pool:WorkerPool.add", _before("pool.add", _payload))
    _patch("zerotask.node.frames:write", _before("pipe.send", _payload))  # (descriptor, payload)
    _patch("zerotask.node.frames:read", _pipe_recv)
    _patch("zerotask.node.child:execute", _around("run", "ran", _payload))
    _patch("zerotask.node.threads:ThreadPool.add", _before("pool.add", _payload))  # --pool thread:
    _patch("zerotask.node.threads:execute", _around("run", "ran", _payload))  # in a pool thread or the loop
    _patch("zerotask.node.worker:Worker.stop", _stop_worker)


def _pipe_recv(original: Callable[..., Any]) -> Callable[..., Any]:
    """Stamp "pipe.recv"; in a worker, write the stamps out when the node closes the pipe, since a
    worker leaves with os._exit (no atexit)."""

    def probe(*args: Any, **kwargs: Any) -> Any:
        try:
            data = original(*args, **kwargs)
        except (EOFError, OSError):
            if _role == "worker":
                dump()
            raise
        if len(_stamps) < _MAX_STAMPS:
            _stamps.append(("pipe.recv", _now(), data))
        return data

    return probe


def _stop_worker(original: Callable[..., Any]) -> Callable[..., Any]:
    """Close the worker's pipe and give it a moment to write its stamps before it is terminated."""

    def probe(worker: Any, *args: Any, **kwargs: Any) -> Any:
        worker.connection.close()
        worker.process.join(5.0)
        return original(worker, *args, **kwargs)

    return probe
