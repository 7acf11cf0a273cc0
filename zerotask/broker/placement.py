"""Placement: which queue a task waits in, its priority, and when it may run (an ETA or a countdown).

A caller may say all three when it submits (``queue``, ``priority``, ``countdown_s`` or ``eta``); what
it leaves out comes from the task's own defaults, ``@task(queue=..., priority=...)``, which nodes announce
when they connect (:class:`TaskDefaults`), else the default queue and priority 0. A task whose time is
later waits SCHEDULED in the store; :class:`DueTimer` queues it when its time comes, from a timer set for
the earliest such task (and looked at again every heartbeat, for tasks another broker scheduled).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from zerotask import jsonrpc
from zerotask.broker.params import param
from zerotask.exceptions import InvalidParams, StoreUnavailable
from zerotask.loop import Scheduler, Timer
from zerotask.store import Store, TaskRecord
from zerotask.wire import DEFAULT_QUEUE, MAX_PRIORITY, QUEUE_NAME

log = logging.getLogger("zerotask.broker")

MAX_QUEUES = 100  # queues one node may serve
MAX_DELAY_S = 366 * 86400.0  # how far ahead a task may be scheduled
MAX_DEFAULTS = 10_000  # task names whose defaults the broker keeps (one node's worth)
# The longest task name whose defaults are kept: they outlive the node, so without it a node that connects
# again and again could leave MAX_DEFAULTS names of up to a message's size each (16 MiB) in every table.
MAX_DEFAULT_NAME_CHARS = 1024
_PLACEMENT_KEYS = frozenset(("queue", "priority", "countdown_s", "eta"))


@dataclass(slots=True)
class Placement:
    """What a caller said; None: not said."""

    queue: str | None = None
    priority: int | None = None
    due_at: float | None = None  # time.time() before which the task is not to run


def read_placement(params: jsonrpc.Params) -> Placement | None:
    """The placement in the params of zerotask.broker.submit or call (positions 7 to 10), or None if
    they say nothing of it. Raises InvalidParams for a bad queue name, a priority out of 0-9, a negative
    or absurd countdown, or both a countdown and an ETA."""
    if isinstance(params, dict) and params.keys().isdisjoint(_PLACEMENT_KEYS) or isinstance(params, list) and len(params) <= 7:
        return None  # the common case, decided without reading four parameters
    queue: str | None = param(params, "queue", 7, str, None)
    priority: int | None = param(params, "priority", 8, int, None)
    countdown_s: float | None = param(params, "countdown_s", 9, (int, float), None)
    eta: float | None = param(params, "eta", 10, (int, float), None)
    if queue is None and priority is None and countdown_s is None and eta is None:
        return None
    if queue is not None:
        check_queue(queue)
    if priority is not None and not 0 <= priority <= MAX_PRIORITY:
        raise InvalidParams(f"priority must be an integer from 0 to {MAX_PRIORITY}")
    if countdown_s is not None and eta is not None:
        raise InvalidParams("give countdown_s or eta, not both")
    now = time.time()
    due_at = now + countdown_s if countdown_s is not None else eta
    if due_at is not None and not (math.isfinite(due_at) and due_at - now <= MAX_DELAY_S and (eta is not None or due_at >= now)):
        raise InvalidParams(f"countdown_s must be 0 to {MAX_DELAY_S:.0f} seconds, and eta a Unix time at most that far ahead")
    return Placement(queue, priority, due_at)


def check_queue(queue: Any) -> str:
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise InvalidParams("a queue name has 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return queue


def read_queues(value: Any) -> frozenset[str]:
    """The queues a node serves (zerotask.broker.connect's ``queues``), the default queue if none."""
    if value is None:
        return frozenset((DEFAULT_QUEUE,))
    if not isinstance(value, list) or not 0 < len(value) <= MAX_QUEUES:
        raise InvalidParams(f"queues must be an array of 1 to {MAX_QUEUES} queue names")
    return frozenset(check_queue(queue) for queue in value)


def read_defaults(value: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The ``defaults`` of zerotask.broker.connect that are worth reading: the first MAX_DEFAULTS names of
    at most MAX_DEFAULT_NAME_CHARS whose options are an object. What else a node sent is ignored."""
    if not value:
        return {}
    names = (name for name in value if len(name) <= MAX_DEFAULT_NAME_CHARS and isinstance(value[name], dict))
    return {name: value[name] for name, _ in zip(names, range(MAX_DEFAULTS), strict=False)}


class TaskDefaults:
    """The queue and priority tasks of a name get when the caller says nothing, as nodes announced them
    (the latest announcement wins; kept after the node leaves, for a deploy; at most MAX_DEFAULTS names),
    and how long a task of the name stays unique (``@task(unique_for=...)``)."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[str, int]] = {}
        self._unique_for: dict[str, float] = {}

    def announce(self, defaults: Any) -> None:
        """``{name: {"queue": ..., "priority": ...}}`` from a node's connect; what is not valid is ignored."""
        if not isinstance(defaults, dict):
            return
        for name, options in list(defaults.items())[:MAX_DEFAULTS]:
            if not isinstance(options, dict):
                continue
            queue, priority = options.get("queue", DEFAULT_QUEUE), options.get("priority", 0)
            if isinstance(queue, str) and QUEUE_NAME.fullmatch(queue) and type(priority) is int and 0 <= priority <= MAX_PRIORITY:
                self._by_name.pop(name, None)
                self._by_name[name] = (queue, priority)
            unique_for = options.get("unique_for")
            if isinstance(unique_for, int | float) and type(unique_for) is not bool and 0 < unique_for <= MAX_DELAY_S:
                self._unique_for[name] = float(unique_for)
            else:
                self._unique_for.pop(name, None)
        for table in (self._by_name, self._unique_for):
            while len(table) > MAX_DEFAULTS:
                del table[next(iter(table))]

    def unique_holder(self, store: Store, record: TaskRecord) -> TaskRecord | None:
        """For a task of a name with ``unique_for``: the queued or running task with the same name and
        arguments, if there is one (then this one is not to be queued); otherwise this task takes the
        lock, for ``unique_for`` seconds, and None is returned."""
        unique_for = self._unique_for.get(record.method) if self._unique_for else None
        if unique_for is None:
            return None
        call = orjson.dumps([record.method, record.args, record.kwargs], option=orjson.OPT_SORT_KEYS)  # kwargs in any order
        key = hashlib.blake2b(call, digest_size=16).hexdigest()
        holder = store.lock_unique(key, record.id, time.time() + unique_for)
        if holder is None:
            return None
        # Its add may not have reached the store yet (another broker's, in the same instant): wait for it by id.
        return store.get(holder) or TaskRecord(holder, record.method, record.args, record.kwargs, owner=record.owner)

    def resolve(self, method: str, placement: Placement | None) -> tuple[str, int, float | None]:
        """``(queue, priority, due_at)`` of a new task."""
        queue, priority = self._by_name.get(method, (DEFAULT_QUEUE, 0))
        if placement is None:
            return queue, priority, None
        return placement.queue or queue, priority if placement.priority is None else placement.priority, placement.due_at


class DueTimer:
    """Queues SCHEDULED tasks when their time comes: one timer, for the earliest of them."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self._store = store
        self._scheduler = scheduler
        self._timer: Timer | None = None
        self._at: float | None = None

    def arm(self, due_at: float | None) -> None:
        """Make sure the timer goes off by ``due_at`` (None: by the store's earliest)."""
        if due_at is None:
            try:
                due_at = self._store.next_due()
            except StoreUnavailable:
                return
            if due_at is None:
                return
        if not math.isfinite(due_at) or due_at - time.time() > 2 * MAX_DELAY_S:
            # Never due: a workflow's record waits SCHEDULED for ever (zerotask.broker.workflows). Twice the
            # furthest a task may be scheduled, so that a clock stepping back hides no real task.
            return
        if self._at is not None and self._at <= due_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._at = due_at
        self._timer = self._scheduler.call_later(max(0.0, due_at - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer = self._at = None
        try:
            self._store.due(time.time())  # the loop's round after this timer hands them out
        except StoreUnavailable as error:
            log.warning("could not queue scheduled tasks: %s; trying again", error)
            self._at = time.time() + 1.0
            self._timer = self._scheduler.call_later(1.0, self._fire)
            return
        self.arm(None)
