"""What a :class:`~zerotask.store.redis.RedisStore` was given but has not written yet: the deferred adds
(written by one script call, in the same round trip as the store's next call) and announced task names;
and the queued counts, which count the deferred adds too."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zerotask import jsonrpc
from zerotask.exceptions import QueueFull
from zerotask.store import redis_layout as layout
from zerotask.store.base import METHODS_REMEMBERED_S, TaskRecord
from zerotask.wire import MAX_PRIORITY, QUEUED, SCHEDULED

Command = tuple[Any, ...]
MAX_LANES = 4096
RANKS = [str(9 - priority) for priority in range(MAX_PRIORITY + 1)]  # by priority: where it sorts in its lane


class WriteBuffer:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.records: list[TaskRecord] = []  # adds not yet written, in order
        self.counts: Counter[str] = Counter()  # of those, the QUEUED ones (not SCHEDULED) by method
        self._args: list[Any] = []  # what the add script gets for them (redis_flow.ADD_FIELDS each)
        self._specials: list[Any] = []  # and for those with a due_at or an owner: place (from 1), due_at, owner
        self._bytes = 0
        # The batch's token stays until the batch is written: a batch sent again after an answer was lost
        # (with more tasks after it) is answered as the first time, not refused as if others had its ids.
        self._token = uuid.uuid4().hex
        self._names: dict[str, float] = {}  # task name -> when it was announced
        self._lanes: dict[tuple[str, str], tuple[str, str]] = {}  # (method, queue) -> (lane, names), as the rows have them

    def __bool__(self) -> bool:
        return bool(self.records or self._names)

    def add(self, record: TaskRecord) -> bool:
        """Buffer a task as QUEUED, or SCHEDULED if its ``due_at`` is later than now (the add script
        decides again when it runs); returns whether it is QUEUED. Raises QueueFull when the buffer
        holds ``max_bytes`` (Redis has been unreachable a while), ValueError for a priority that is not
        0 to 9."""
        if type(record.priority) is not int or not 0 <= record.priority <= MAX_PRIORITY:
            raise ValueError(f"a priority is an int from 0 to {MAX_PRIORITY}, not {record.priority!r}")
        params = jsonrpc.dumps([record.args, record.kwargs, record.options])
        if self._bytes + len(params) > self.max_bytes:
            limit = self.max_bytes
            raise QueueFull(f"the Redis store buffers {limit} bytes of tasks not yet written", {"limit": limit, "bound": "store"})
        now = time.time()
        record.state = SCHEDULED if record.due_at is not None and record.due_at > now else QUEUED
        record.finished_at = None
        record.created_at = now if record.created_at is None else record.created_at
        due = "" if record.due_at is None else repr(float(record.due_at))
        created = repr(record.created_at)
        method, queue = record.method, record.queue
        lane = self._lanes.get((method, queue))
        if lane is None:
            if len(self._lanes) >= MAX_LANES:  # names come from clients: keep a bounded few
                self._lanes.clear()
            lane = self._lanes[(method, queue)] = (layout.lane(method, queue), layout.names(method, queue))
        rest = f"|{record.attempts}|{created}|{record.priority}|{due}|{lane[1]}"
        self.records.append(record)
        # The row's payload (see redis_layout), made by a copy: orjson's output keeps a buffer of 4 KB, and
        # allocating one for each task held until the write cost more than the rest of the add.
        self._args += [record.id, b"\x1f%s\x1f\x1f|" % params, rest, lane[0] + RANKS[record.priority]]
        if due or record.owner is not None:
            self._specials += [len(self.records), due, "" if record.owner is None else "+" + record.owner]
        self._bytes += len(params) + len(record.id) + len(rest)
        if record.state != QUEUED:
            return False
        self.counts[method] += 1
        return True

    def detach(self) -> WriteBuffer:
        """A buffer holding what this one held (to be written by a call sent ahead); this one starts empty."""
        batch = WriteBuffer(self.max_bytes)
        batch.records, batch.counts, batch._args, batch._bytes = self.records, self.counts, self._args, self._bytes
        batch._specials, batch._token, batch._names = self._specials, self._token, self._names
        self.records, self.counts, self._args, self._bytes, self._names = [], Counter(), [], 0, {}
        self._specials = []
        self._token = uuid.uuid4().hex
        return batch

    def restore(self, batch: WriteBuffer) -> None:
        """Put back a detached batch that may not have been written, before what was buffered since, under
        the batch's token: if it did run, the add script answers it as the first time."""
        if batch.records:
            shifted = list(self._specials)
            shifted[::3] = [place + len(batch.records) for place in self._specials[::3]]  # after the batch's
            self._specials = batch._specials + shifted
            self.records, self._args = batch.records + self.records, batch._args + self._args
            self._bytes += batch._bytes
            self.counts.update(batch.counts)
            self._token = batch._token
        self._names = {**batch._names, **self._names}

    def remember(self, methods: Iterable[str]) -> None:
        now = time.time()
        self._names.update((name, now) for name in methods)

    def commands(self, script: Callable[..., Command], methods_key: str, max_names: int) -> list[Command]:
        """The commands that write the buffer: the add script's call (made by ``script``) first, if any;
        then the names, keeping the latest ``max_names`` announced within METHODS_REMEMBERED_S."""
        commands: list[Command] = []
        if self.records:
            specials = self._specials
            commands.append(script("add", self._token, len(self.records), len(specials) // 3, *self._args, *specials))
        if self._names:
            cutoff = time.time() - METHODS_REMEMBERED_S
            pairs = [value for name, when in self._names.items() for value in (repr(when), name)]
            commands.append(("ZADD", methods_key, *pairs))
            commands.append(("ZREMRANGEBYSCORE", methods_key, "-inf", f"({cutoff!r}"))
            commands.append(("ZREMRANGEBYRANK", methods_key, 0, -max_names - 1))
        return commands

    def written(self, added: Any) -> tuple[list[TaskRecord], Any]:
        """The commands ran; ``added`` is the add script's reply if there were adds. Returns the records
        refused (their id existed) and the queued counts the script sent, or None; empties the buffer."""
        refused, queued = [], None
        if self.records:
            flags, queued = added
            refused = [record for record, flag in zip(self.records, flags, strict=True) if flag != ord("1")]
            self.records, self._args, self._specials, self._bytes = [], [], [], 0
            self.counts.clear()
            self._token = uuid.uuid4().hex
        self._names.clear()
        return refused, queued


class QueuedCounts(dict[str, int]):
    """Tasks QUEUED by method (only methods with some): the counts the store's last reply brought plus
    the adds not written yet, as one dict kept up to date in place, as a MemoryStore's counts are: the
    broker's assigner reads the same mapping again after each take, to decide whether to take more (a
    copy would make it take once more for nothing), and every submit sums it (a view over two dicts
    cost more than the rest of the add)."""

    __slots__ = ()

    def merge(self, written: Mapping[str, int], buffered: Mapping[str, int]) -> None:
        """The counts are ``written`` plus ``buffered`` now (both positive, by method)."""
        self.clear()
        self.update(written)
        for method, count in buffered.items():
            self[method] = self.get(method, 0) + count

    def buffered(self, method: str) -> None:
        """One more task of ``method`` QUEUED, not written yet."""
        self[method] = self.get(method, 0) + 1
