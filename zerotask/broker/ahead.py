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
        self._unfollowed: list[tuple[Finals, list[bool], Handed]] = []  # answers read, not yet acted on

    @property
    def taking(self) -> bool:
        """Whether a write was sent whose answer the transport has not taken yet."""
        return self._assigner.taking or self._handed is not None or bool(self._unfollowed)

    @property
    def answer_pending(self) -> bool:
        """Whether a write was sent whose answer is not read yet."""
        return self._assigner.taking

    def send(self, nodes: Iterable[NodeSlot], outcomes: Callable[[Finals], Sequence[Outcome]]) -> None:
        self._sent, self.unsent = self.unsent, []
        try:
            self._assigner.begin(nodes, outcomes(self._sent), bool(self._writes.added))
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

    def read_answer(self) -> None:
        """Read the write's answer (the nodes' credit is then used up by what it took), but leave what
        follows to :meth:`answered`: the next write can go first, and the store work on it meanwhile."""
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
        self._unfollowed.append((finals, recorded, handed))

    def _read(self) -> None:
        self.read_answer()
        while self._unfollowed:
            finals, recorded, handed = self._unfollowed.pop(0)
            self._ended(finals, recorded)
            self._handed = (self._handed or []) + self._hand(handed)
