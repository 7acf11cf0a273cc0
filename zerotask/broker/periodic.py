"""Periodic tasks: ``@task(every=SECONDS)`` and ``@task(cron="*/5 * * * *")``, run by the broker itself.

There is no beat process to run, or to run twice: nodes announce their tasks' schedules when they connect
(the ``defaults`` of zerotask.broker.connect), and the broker submits one task per *slot*, the instant a
schedule falls due (every ``every`` seconds since the Unix epoch, or each time the cron expression
matches, in UTC; cron expressions are read by croniter). Each slot is claimed in the store first
(:meth:`zerotask.store.Store.claim_slot`), so however many brokers share a store, one of them runs it.
Slots missed while no broker ran (or no node had announced the schedule) are not all made up: the
latest of them runs once, as soon as the schedule is known again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zerotask.exceptions import ZerotaskError
from zerotask.loop import Scheduler, Timer
from zerotask.store import Store
from zerotask.task import cron_problem

log = logging.getLogger("zerotask.broker")

MAX_SCHEDULES = 1_000  # periodic task names the broker keeps schedules for
MIN_EVERY_S = 0.1  # a shorter period would be a busy loop of submits
MAX_EVERY_S = 366 * 86400.0  # a longer one is junk (1e300 s would run once, at the epoch's slot, then never)
# Slots per second of all schedules together (a cron expression counts once a minute): 1,000 names at the
# shortest period would have had the broker submit 10,000 tasks a second to itself, for ever.
MAX_SLOTS_PER_S = 100.0

Submit = Callable[[str, str], object]  # submit(task name, task id); what it returns is ignored


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic task is due: every ``every_s`` seconds, or when ``cron`` matches (UTC)."""

    every_s: float | None = None
    cron: str | None = None

    @property
    def slots_per_s(self) -> float:
        return 1.0 / self.every_s if self.every_s is not None else 1.0 / 60

    def latest(self, now: float) -> float:
        """The latest slot at or before ``now``."""
        if self.every_s is not None:
            return math.floor(now / self.every_s) * self.every_s
        return float(_croniter(self.cron, now).get_prev(float))  # type: ignore[arg-type]

    def following(self, now: float) -> float:
        """The first slot after ``now``."""
        if self.every_s is not None:
            return (math.floor(now / self.every_s) + 1) * self.every_s
        return float(_croniter(self.cron, now).get_next(float))  # type: ignore[arg-type]


def read_schedule(options: Any) -> Schedule | None:
    """The schedule in one task's announced defaults (``{"every": seconds}`` or ``{"cron": expression}``),
    or None if there is none or it is not valid (a node's word is checked, never trusted): a period out of
    MIN_EVERY_S to MAX_EVERY_S, or a cron expression that is not five fields or never matches."""
    if not isinstance(options, dict):
        return None
    every, cron = options.get("every"), options.get("cron")
    if isinstance(every, int | float) and type(every) is not bool and MIN_EVERY_S <= every <= MAX_EVERY_S:
        return Schedule(every_s=float(every)) if cron is None else None
    if isinstance(cron, str) and every is None and cron_problem(cron) is None:
        return Schedule(cron=cron)
    return None


def _croniter(expression: str, now: float) -> Any:
    from croniter import croniter

    return croniter(expression, now)


class Periodic:
    """The schedules nodes announced, and the timer that submits each task when its slot comes."""

    def __init__(self, store: Store, scheduler: Scheduler, submit: Submit) -> None:
        self._store = store
        self._scheduler = scheduler
        self._submit = submit
        self._schedules: dict[str, Schedule] = {}
        self._next: dict[str, float] = {}  # when each schedule's next slot comes: only those due are looked at
        self._slots_per_s = 0.0  # of all the schedules together
        self._timer: Timer | None = None

    def announce(self, defaults: Any) -> None:
        """Take the schedules in a node's ``defaults`` (``{name: {"every": ...} | {"cron": ...}}``); run the
        latest slot of each new one at once unless it ran (the catch-up), then keep each on time. A schedule
        beyond MAX_SCHEDULES names or MAX_SLOTS_PER_S is ignored."""
        if not isinstance(defaults, dict):
            return
        changed = False
        for name, options in list(defaults.items())[:MAX_SCHEDULES]:
            schedule = read_schedule(options)
            old = self._schedules.get(name)
            if schedule is None or old == schedule:
                continue
            if old is None and len(self._schedules) >= MAX_SCHEDULES:
                continue
            slots_per_s = self._slots_per_s - (old.slots_per_s if old is not None else 0.0) + schedule.slots_per_s
            if slots_per_s > MAX_SLOTS_PER_S:
                log.warning("periodic task %r ignored: all schedules together would run %.0f a second", name, slots_per_s)
                continue
            self._schedules[name] = schedule
            self._slots_per_s = slots_per_s
            self._next[name] = -math.inf  # its catch-up
            changed = True
        if changed:
            self._due()

    def _due(self) -> None:
        """Submit every task whose latest slot has not run, then set the timer for the next slot."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        now = time.time()
        for name, next_at in list(self._next.items()):
            if next_at > now:
                continue
            schedule = self._schedules[name]
            slot = schedule.latest(now)
            try:
                if self._store.claim_slot(name, slot):
                    self._submit(name, slot_task_id(name, slot))
            except ZerotaskError as error:  # the store is unreachable, the queue is full...: this slot is missed
                log.warning("periodic task %r due at %.3f not submitted: %s", name, slot, error)
            self._next[name] = schedule.following(now)
        if self._next:
            following = min(self._next.values())
            self._timer = self._scheduler.call_later(max(0.0, following - time.time()), self._due)


def slot_task_id(name: str, slot: float) -> str:
    """The id of the task of one slot: the same at every broker (the store adds it once)."""
    return "periodic-" + hashlib.blake2b(f"{name}\x00{slot!r}".encode(), digest_size=16).hexdigest()
