"""Rate limits: ``@task(rate_limit="100/s")`` (also ``/m`` and ``/h``), for all nodes together.

Celery enforces a rate limit per worker, so ten workers run ten times the rate; here the broker enforces
it where tasks are handed out: a task of a limited name leaves the queue only with a token from that
name's bucket, which refills at the rate and holds at most one second's worth (at least one token). The
bucket lives in the store (:meth:`zerotask.store.Store.take_tokens`), so brokers sharing a store share it.
Nodes announce their tasks' limits when they connect (the ``defaults`` of zerotask.broker.connect).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zerotask.loop import Scheduler, Timer
from zerotask.store import Store
from zerotask.task import parse_rate

MAX_LIMITS = 10_000


class RateLimits:
    """The limits nodes announced, by task name, and the tokens taken for them."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self._store = store
        self._scheduler = scheduler
        self._per_s: dict[str, float] = {}
        self._wakeup: Timer | None = None

    def announce(self, defaults: Any) -> None:
        """Take the ``rate_limit`` of each task in a node's ``defaults``; an invalid one is ignored."""
        if not isinstance(defaults, dict):
            return
        for name, options in list(defaults.items())[:MAX_LIMITS]:
            rate = parse_rate(options.get("rate_limit")) if isinstance(options, dict) else None
            if rate is not None and (name in self._per_s or len(self._per_s) < MAX_LIMITS):
                self._per_s[name] = rate

    @property
    def limited(self) -> Mapping[str, float]:
        """Tasks per second, by task name, for the names with a limit."""
        return self._per_s

    def reserve(self, method: str, wanted: int) -> int:
        """Take up to ``wanted`` tokens for tasks of ``method``; returns how many. When short, the loop is
        woken when the next token is due, so that the tasks waiting for it go out then."""
        per_s = self._per_s[method]
        granted = self._store.take_tokens(method, per_s, max(1.0, per_s), wanted)
        if granted < wanted and self._wakeup is None:
            self._wakeup = self._scheduler.call_later(1.0 / per_s, self._woken)
        return granted

    def _woken(self) -> None:
        self._wakeup = None  # the round after this timer hands out what is due

    def give_back(self, method: str, count: int) -> None:
        """Return tokens taken for tasks that were not there after all."""
        if count > 0:
            self._store.take_tokens(method, self._per_s[method], max(1.0, self._per_s[method]), -count)
