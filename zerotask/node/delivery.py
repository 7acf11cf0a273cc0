"""Outcomes on their way to the broker: sent, and not yet known to have arrived.

A broker that dies takes with it what was in flight: what sat in its socket buffers, and what the node
sent before it noticed (a broker whose host is cut off swallows everything sent for seconds). So the
node keeps each outcome it sends until the broker answers a ping sent after it: a socket keeps order,
and the broker answers only once what came before is stored. At each heartbeat, if outcomes went out
since the last such ping, the node sends one. When it connects again, to the same broker or another, it
sends again every outcome not confirmed, after its connect, which lists those tasks as running so that
the broker lets it end them. A broker keeps the first outcome of a task: one that arrives twice does no
harm.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

PING_PREFIX = "delivered-"
MAX_PINGS = 8  # unanswered pings remembered: what was sent before older ones is taken as delivered

Outcome = dict[str, Any]


class Deliveries:
    """The outcomes sent and not confirmed, grouped by the ping that followed them."""

    def __init__(self) -> None:
        self._unpinged: list[list[Outcome]] = []  # batches sent since the last ping
        self._pinged: collections.deque[tuple[int, list[list[Outcome]]]] = collections.deque()
        self._pings = itertools.count(1)

    def sent(self, outcomes: list[Outcome]) -> None:
        """``outcomes`` went to the broker (the list is kept as it is: do not change it afterwards)."""
        self._unpinged.append(outcomes)

    def ping_id(self) -> str | None:
        """The id of a ping to send now, if outcomes went out since the last one; else None."""
        if not self._unpinged:
            return None
        number = next(self._pings)
        self._pinged.append((number, self._unpinged))
        self._unpinged = []
        if len(self._pinged) > MAX_PINGS:
            self._pinged.popleft()
        return f"{PING_PREFIX}{number}"

    def answered(self, response_id: Any) -> bool:
        """Whether ``response_id`` is the id of one of these pings. If it is, everything sent before
        that ping has arrived, and is forgotten here."""
        if not isinstance(response_id, str) or not response_id.startswith(PING_PREFIX):
            return False
        number = response_id.removeprefix(PING_PREFIX)
        if number.isdigit():
            while self._pinged and self._pinged[0][0] <= int(number):
                self._pinged.popleft()
        return True

    def unconfirmed(self) -> list[Outcome]:
        """Every outcome sent and not confirmed, oldest first, forgotten here: the caller sends them again."""
        batches = [batch for _, pinged in self._pinged for batch in pinged] + self._unpinged
        self._pinged.clear()
        self._unpinged = []
        return [outcome for batch in batches for outcome in batch]
