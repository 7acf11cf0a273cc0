"""The broker's upkeep of its store, on timers and on the store's own notifications: forgetting old
outcomes, and, with a store other brokers share (Redis), renewing this broker's lease, queueing again
what a broker whose lease ran out held, and hearing what the others did."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from zerotask.broker.assignment import NodeId
from zerotask.broker.core import BrokerCore
from zerotask.exceptions import StoreUnavailable
from zerotask.loop import EventLoop

log = logging.getLogger("zerotask.broker")

_EXPIRE_BUDGET_S = 0.01  # the longest one round of result expiry may hold up the loop


class StoreUpkeep:
    """``revoke(node, task ids)`` tells a node here to stop tasks that ended elsewhere; ``resume_workflows``
    looks at unfinished workflows again (a broker that died may have left one between two steps)."""

    def __init__(
        self,
        core: BrokerCore,
        loop: EventLoop,
        revoke: Callable[[NodeId, list[str]], None],
        resume_workflows: Callable[[], None],
        result_ttl_s: float | None,
    ) -> None:
        self.core, self.store, self.loop = core, core.store, loop
        self._revoke, self._resume_workflows = revoke, resume_workflows
        self.result_ttl_s = result_ttl_s
        self._store_fd: int | None = None

    def expire(self) -> None:
        """Forget old outcomes in rounds of at most _EXPIRE_BUDGET_S, coming back at once while any are
        left: expiry keeps up with any throughput and never stalls the loop."""
        deadline = time.monotonic() + _EXPIRE_BUDGET_S
        expired, batch = 0, 1000
        while time.monotonic() < deadline:
            try:
                forgot = self.core.expire(limit=batch)
            except StoreUnavailable:
                return  # the next round of expiry tries again
            expired += forgot
            if forgot < batch:
                break
        else:
            self.loop.call_later(0, self.expire)
        if expired:
            log.debug("forgot %d task outcome(s) older than %.0f s", expired, self.result_ttl_s)

    # ---- other brokers on the same store -------------------------------------------------------------

    def keep_lease(self) -> None:
        if self.core.writes.down:
            return  # the commit's probe tries the store; a lease that runs out meanwhile is reclaimed by another
        self.core.due_timer.arm(None)  # tasks another broker scheduled are due here too
        try:
            self.store.heartbeat()
            reclaimed = self.store.reclaim()
        except StoreUnavailable as error:
            log.debug("could not renew the lease: %s", error)
            return
        finally:
            self.watch()  # a store that reconnected listens on another descriptor (or none, while down)
        if reclaimed:
            log.warning("queued %d task(s) again from a broker whose lease ran out", reclaimed)
            self._resume_workflows()  # that broker may have died in the middle of a workflow's step

    def watch(self) -> None:
        """Poll the store's notifications (its file descriptor may change when it reconnects)."""
        fd = self.store.fileno()
        if fd != self._store_fd:
            if self._store_fd is not None:
                self.loop.remove_socket(self._store_fd)
            if fd is not None:
                self.loop.add_socket(fd, self._on_changes)
            self._store_fd = fd

    def _on_changes(self) -> None:
        try:
            for node_id, task_id in self.core.take_changes():
                self._revoke(node_id, [task_id])
        except StoreUnavailable as error:
            log.debug("could not read the store's changes: %s", error)
        self.watch()
        if self.core.waiters.rechecking:
            self.loop.call_later(0, self._on_changes)
