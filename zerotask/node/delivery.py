"""Outcomes on their way to the broker: sent, and not yet known to have arrived.

A broker that dies takes with it what was in flight: what sat in its socket buffers, and what the node
sent before it noticed (a broker whose host is cut off swallows everything sent for seconds). So the
node keeps each outcome it sends until the broker answers a ping sent after it: a socket keeps order,
and the broker answers only once what came before is stored. At each heartbeat, if outcomes went out
since the last such ping, the node sends one. When it connects again, to the same broker or another, it
sends again every outcome not confirmed, after its connect, which lists those tasks as running so that
the broker lets it end them. A broker keeps the first outcome of a task: one that arrives twice does no
harm.

Order alone does not prove arrival: ZeroMQ reconnects a dropped connection by itself, so outcomes lost
with a dead broker's buffers may be followed by a ping that reaches the broker started in its place. So
the ping says how many outcomes the node sent since its connect, and the broker answers how many it
heard from it (null if it does not know the node): only an answer that matches confirms; any other
means some were lost, and the node connects again.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from zerotask import jsonrpc, wire

PING_PREFIX = "delivered-"
MAX_PINGS = 8  # unanswered pings remembered: what was sent before older ones is taken as delivered

Outcome = dict[str, Any]


class Deliveries:
    """The outcomes sent and not confirmed, grouped by the ping that followed them."""

    def __init__(self) -> None:
        self._unpinged: list[list[Outcome]] = []  # batches sent since the last ping
        # (ping number, outcomes sent on this connection before it, the batches it confirms)
        self._pinged: collections.deque[tuple[int, int, list[list[Outcome]]]] = collections.deque()
        self._pings = itertools.count(1)
        self._sent = 0  # outcomes sent since the connect

    def sent(self, outcomes: list[Outcome]) -> None:
        """``outcomes`` went to the broker (the list is kept as it is: do not change it afterwards)."""
        self._unpinged.append(outcomes)
        self._sent += len(outcomes)

    def ping(self) -> tuple[str, dict[str, int]] | None:
        """The id and params of a ping to send now, if outcomes went out since the last one; else None."""
        if not self._unpinged:
            return None
        number = next(self._pings)
        self._pinged.append((number, self._sent, self._unpinged))
        self._unpinged = []
        if len(self._pinged) > MAX_PINGS:
            self._pinged.popleft()
        return f"{PING_PREFIX}{number}", {"finished": self._sent}

    @staticmethod
    def is_ping(response_id: Any) -> bool:
        """Whether ``response_id`` is the id of a ping made here."""
        return isinstance(response_id, str) and response_id.startswith(PING_PREFIX)

    def answered(self, response_id: str, result: Any) -> bool:
        """The broker answered the ping ``response_id`` with ``result``. Returns False if the answer shows
        that outcomes were lost on the way (connect again: :meth:`unconfirmed` gives them back); else
        True, and everything sent before that ping is forgotten here as arrived."""
        number = response_id.removeprefix(PING_PREFIX)
        if not number.isdigit():
            return True
        found = [sent for ping, sent, _ in self._pinged if ping == int(number)]
        if not found:  # answered after a later ping's answer, or from before the connect: nothing to learn
            return True
        # A broker of an earlier version says nothing of what it heard: then order is all there is to go on.
        if not isinstance(result, dict) or result.get("finished", found[0]) != found[0]:
            return False
        while self._pinged and self._pinged[0][0] <= int(number):
            self._pinged.popleft()
        return True

    def unconfirmed(self) -> list[Outcome]:
        """Every outcome sent and not confirmed, oldest first, forgotten here: the caller sends them again,
        on a new connection."""
        batches = [batch for _, _, pinged in self._pinged for batch in pinged] + self._unpinged
        self._pinged.clear()
        self._unpinged = []
        self._sent = 0
        return [outcome for batch in batches for outcome in batch]


def split_outcomes(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch's notifications with ``zerotask.broker.finished`` cut into one per outcome (each of
    which the pool has checked fits the broker's limit), for a batch over the broker's limit."""
    split: list[dict[str, Any]] = []
    for message in batch:
        if message["method"] == wire.FINISHED_TASKS:
            split.extend(jsonrpc.notification(message["method"], {"tasks": [outcome]}) for outcome in message["params"]["tasks"])
        else:
            split.append(message)
    return split
