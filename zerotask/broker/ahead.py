"""A round's store work sent ahead, for a store that pipelines (``Store.pipelined``: Redis).

At a round's end the broker sends the round's one write: the tasks added, the outcomes the nodes
reported, and the take for the nodes with credit. Then it goes back to its sockets while the store
works, and reads the answer when it comes (the transport polls its socket) or first thing at the next
round's end: the outcomes are recorded, then what the take took is handed out, and the acknowledgements
of the tasks the write carried, held meanwhile, go out. Whatever must see the store as it is (a revoke,
a node lost) settles first: it reads the answer and writes the outcomes that wait, at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from zerotask.broker.assignment import Assigner, NodeSlot
from zerotask.broker.writes import StoreWrites
from zerotask.exceptions import StoreUnavailable
from zerotask.store import Outcome, TaskRecord

Finals = list[tuple[TaskRecord, Outcome]]
Handed = list[tuple[NodeSlot, list[TaskRecord]]]


class RoundAhead:
    """``end(finals)`` records outcomes at once, ``ended(finals, recorded)`` does what follows their
    recording, ``hand(handed)`` what follows a take (each as :class:`~zerotask.broker.core.BrokerCore`'s)."""

    def __init__(
        self,
        assigner: Assigner,
        writes: StoreWrites,
        end: Callable[[Finals], None],
        ended: Callable[[Finals, list[bool]], None],
        hand: Callable[[Handed], Handed],
    ) -> None:
        self._assigner, self._writes = assigner, writes
        self._end, self._ended, self._hand = end, ended, hand
        self.unsent: Finals = []  # outcomes that wait for the round's write
        self._sent: Finals = []  # those the write carries
        self._handed: Handed | None = None  # what an answer handed out, not yet taken by the transport

    @property
    def taking(self) -> bool:
        """Whether a write was sent whose answer the transport has not taken yet."""
        return self._assigner.taking or self._handed is not None

    def send(self, nodes: Iterable[NodeSlot], outcomes: Callable[[Finals], Sequence[Outcome]]) -> None:
        self._sent, self.unsent = self.unsent, []
        try:
            self._assigner.begin(nodes, outcomes(self._sent))
        except StoreUnavailable:
            self._writes.keep(functools.partial(self._end, self._sent))
            self._sent = []
            raise

    def answered(self) -> Handed:
        """What the write's take handed out, its outcomes recorded (waiting for its answer if need be)."""
        self._read()
        handed, self._handed = self._handed or [], None
        return handed

    def settle(self) -> None:
        self._read()
        if self.unsent:
            finals, self.unsent = self.unsent, []
            try:
                self._end(finals)
            except StoreUnavailable:  # once the store is back (one that ran is then recorded already)
                self._writes.keep(functools.partial(self._end, finals))

    def _read(self) -> None:
        if not self._assigner.taking:
            return
        finals, self._sent = self._sent, []
        try:
            recorded, handed = self._assigner.answered()
        except StoreUnavailable:  # the next commits write again what it carried
            self._writes.lost()
            self._writes.keep(functools.partial(self._end, finals))
            self._handed = self._handed or []
            return
        self._ended(finals, recorded)
        self._handed = (self._handed or []) + self._hand(handed)
