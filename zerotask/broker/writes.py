"""StoreWrites: the core's writes to a store that may be unreachable (Redis down or failing over).

A write that fails is kept and done again, in order, before the next flush; until a flush reaches the
store, the broker refuses new tasks (StoreUnavailable) rather than accept what it cannot store. Tasks
added in a round whose flush failed stay in the store's buffer, and the round's acknowledgements wait
(the transport holds them) until a later flush makes them durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from zerotask.exceptions import StoreUnavailable
from zerotask.store import Store, TaskRecord

log = logging.getLogger("zerotask.broker")

PROBE_EVERY_S = 0.5  # while the store is down, how often a flush tries it (a call may wait a second to fail)
MAX_UNWRITTEN = 10_000  # writes kept for later while the store is unreachable (each: one node report, or one requeue)


class StoreWrites:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False  # the store failed: submits are refused until a flush reaches it again
        self.added = 0  # tasks added since the last flush: their acknowledgements wait for it
        self._unwritten: list[Callable[[], None]] = []
        self._probed_at = 0.0
        self.probe_every_s = PROBE_EVERY_S

    def write(self, write: Callable[[], None]) -> None:
        """Do a write now, or, if the store is unreachable, at the next :meth:`flush`."""
        try:
            write()
        except StoreUnavailable:
            self.keep(write)

    def keep(self, write: Callable[[], None]) -> None:
        """Keep a write that failed, to do at the next flush; bounded (beyond, the write is dropped: its
        tasks are queued again when their node is lost, or when this broker's lease runs out)."""
        self.down = True
        if len(self._unwritten) < MAX_UNWRITTEN:
            self._unwritten.append(write)

    def lost(self) -> None:
        """A write sent ahead failed: the store is down (submits refused) until a flush reaches it."""
        if not self.down:
            log.error("the store is unreachable: refusing new tasks until it is back")
        self.down = True

    def flush(self) -> tuple[bool, list[TaskRecord]]:
        """Do the kept writes, then flush the store. Returns whether this round's messages may go out
        (False if tasks were added and the store could not make them durable), and the added records
        the store refused because their id was taken."""
        added, self.added = self.added, 0
        try:
            if self.down:
                # Not every round: a store cut off (no reset) makes each try wait for its timeout.
                now = time.monotonic()
                if now - self._probed_at < self.probe_every_s:
                    return not added, []
                self._probed_at = now
                self.store.heartbeat()  # a real round trip: an empty flush proves nothing
            while self._unwritten:
                self._unwritten[0]()
                del self._unwritten[0]
            refused = self.store.flush()
        except StoreUnavailable as error:
            if not self.down:
                log.error("the store is unreachable: refusing new tasks until it is back (%s)", error)
            self.down = True
            return not added, []
        if self.down:
            log.warning("the store is back: accepting tasks again")
            self.down = False
        return True, refused
