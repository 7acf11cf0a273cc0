"""The queue of a MemoryStore: where its waiting tasks wait, in a few bytes each.

Each task queued gets a *place*, a number that grows with every task (a reset gives a new one). Within
what a node may take, the highest priority goes first, then the lowest place; a task put back (requeued,
or due after its delay) goes back to its place. There is one *line* per queue, method and priority. A task
queued at the back takes a slot in its line's list and one in an array of *keys*, 16 bytes in all: a
heap of (priority, place, id) tuples, with the places and the charges in dicts by task id, took 170 bytes
per task more, 170 MB for a million queued tasks.

A key is a place and, in its low bits, the task's size hint (the bytes of the request it came in, for a
task whose arguments are not packed): what waiting tasks' arguments count for then leaves the count with
the entry, with no dict of charges.

A task that leaves its line other than from the front (claimed, retried or ended while QUEUED) leaves its
entry behind: an *orphan*, dropped when it reaches the front (finding it sooner would take an index, that
is bytes per task again). A task's orphans come before its own entry, which has a later place. A task
requeued while its orphan is still in line takes that entry back: it is in the task's place. A task out
of line otherwise (held by a node, retried, scheduled) has its place kept in a dict until it is back.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
from array import array
from collections.abc import Iterable, Sequence

from zerotask.store.base import TaskRecord
from zerotask.wire import ASSIGNED, QUEUED, RETRY, SCHEDULED

HINT_BITS = 11  # a key's low bits: a size hint up to MAX_HINT (PACK_OVER_BYTES, for a task not packed, fits)
MAX_HINT = (1 << HINT_BITS) - 1
# A line keeps its entries in chunks of this many: a list or an array that grows to millions moves to a
# new buffer each time, leaving the old ones as holes in the heap (30 bytes per task in all, 16 in chunks).
CHUNK = 4096
# Orphans are swept out of every line at once when there are more than this many, and more than queued
# tasks: a line nobody takes from would keep them (and their records) forever.
SWEEP_OVER = 1024

_KEY = operator.itemgetter(0)  # of a (key, record) entry


class _Line:
    """The entries of one (queue, method, priority), lowest key first: the ones queued at the back, in
    ``chunks`` of records and their keys (the first one's from ``head`` on), and the ones put back in an
    earlier place, in a heap."""

    __slots__ = ("back", "chunks", "head", "priority", "size")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        # (a list, not a deque: an empty deque takes 760 bytes, and there are a few hundred chunks at most)
        self.chunks: list[tuple[list[TaskRecord], array[int]]] = []
        self.head = 0  # entries of the first chunk before it have left the line
        self.size = 0  # entries in the chunks
        self.back: list[tuple[int, TaskRecord]] = []  # a min-heap of (key, record)

    def __len__(self) -> int:
        return self.size + len(self.back)

    def append(self, record: TaskRecord, key: int) -> None:
        """Add an entry at the back: its key must be above every key in the chunks."""
        chunks = self.chunks
        if not chunks or len(chunks[-1][0]) == CHUNK:
            chunks.append(([], array("q")))
        records, keys = chunks[-1]
        records.append(record)
        keys.append(key)
        self.size += 1

    def first(self) -> tuple[int, TaskRecord]:
        """The entry with the lowest key, as (key, record). The line must not be empty."""
        back = self.back
        if back and (not self.size or back[0][0] < self.chunks[0][1][self.head]):
            return back[0]
        records, keys = self.chunks[0]
        return keys[self.head], records[self.head]

    def front(self, most: int) -> tuple[Sequence[TaskRecord], Sequence[int]]:
        """The first entries, as their records and their keys: at least one (the line must not be empty),
        at most ``most``, all in the first chunk; only the first while some are put back."""
        if self.back:
            key, record = self.first()
            return [record], [key]
        records, keys = self.chunks[0]
        end = min(len(records), self.head + max(most, 1))
        return records[self.head : end], keys[self.head : end]

    def pop(self, most: int) -> tuple[Sequence[TaskRecord], Sequence[int]]:
        """Remove the first entries, at least one (the line must not be empty) and at most ``most``, and
        return them as :meth:`front` does; a run of tasks put back too, all from the heap or all from the
        first chunk, whichever comes first."""
        back = self.back
        if not back:
            records, keys = self.front(most)
            self._advance(len(records))
            return records, keys
        if not self.size or back[0][0] < self.chunks[0][1][self.head]:
            below = self.chunks[0][1][self.head] if self.size else None
            keys, records = [], []
            while back and len(keys) < most and (below is None or back[0][0] < below):
                key, record = heapq.heappop(back)
                keys.append(key)
                records.append(record)
            return records, keys
        chunk_records, chunk_keys = self.chunks[0]
        end = min(len(chunk_records), self.head + max(most, 1))
        end = max(self.head + 1, bisect.bisect_left(chunk_keys, back[0][0], self.head, end))
        records, keys = chunk_records[self.head : end], chunk_keys[self.head : end]
        self._advance(len(records))
        return records, keys

    def drop(self, count: int) -> None:
        """Remove the first ``count`` entries: the ones :meth:`front` gave last, or the first of them."""
        back = self.back
        if not count:
            return
        if back and (not self.size or back[0][0] < self.chunks[0][1][self.head]):
            heapq.heappop(back)  # (front gave only this one)
        else:
            self._advance(count)

    def _advance(self, count: int) -> None:
        """Remove the first ``count`` entries of the chunks."""
        head = self.head + count
        self.size -= count
        if head == len(self.chunks[0][0]):
            del self.chunks[0]
            head = 0
        self.head = head


def _merged(lines: list[_Line], most: int) -> tuple[list[TaskRecord], list[int]]:
    """The first entries of several lines together, lowest key first, out of their lines: at least one,
    at most ``most``. Sorted in one go, not picked one by one: tasks of several methods interleave."""
    fronts = [line.front(most) for line in lines]
    entries = sorted(itertools.chain.from_iterable(zip(keys, records, strict=True) for records, keys in fronts), key=_KEY)
    # A front that stops short of ``most`` (at the end of a chunk, or before a task put back) may have
    # lower keys behind it than other fronts have: only entries up to its last one are surely first.
    short = [keys[-1] for line, (_, keys) in zip(lines, fronts, strict=True) if len(keys) < min(most, len(line))]
    if short:
        most = min(most, bisect.bisect_right(entries, min(short), key=_KEY))
    entries = entries[:most]
    last = entries[-1][0]
    for line, (_, keys) in zip(lines, fronts, strict=True):
        line.drop(bisect.bisect_right(keys, last))
    return [record for _, record in entries], [key for key, _ in entries]


class MemoryQueue:
    """The QUEUED and SCHEDULED tasks of a MemoryStore, in order, and the places of its held ones. The
    store keeps the tasks' states, which the queue reads: it makes the tasks :meth:`take` and :meth:`due`
    return ASSIGNED and QUEUED, and tells the queue (:meth:`leave`) when a QUEUED task left otherwise."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # QUEUED tasks by method (only methods with some)
        self.hints = 0  # the size hints of every entry kept: what waiting arguments count for, over INFLATION
        self._lanes: dict[tuple[str, str], list[_Line]] = {}  # (queue, method) -> its lines, one per priority
        self._scheduled: list[tuple[float, int, TaskRecord]] = []  # a min-heap of (due_at, key, record)
        self._places: dict[str, int] = {}  # task id -> its place, while it is out of line: held, retried, scheduled
        self._orphans: dict[int, int] = {}  # id(record) -> its entries left behind in its line
        self._orphaned = 0  # entries left behind, in every line
        self._last_place = 0

    def append(self, record: TaskRecord, hint: int = 0) -> None:
        """Queue a task in a new place, at the back of its line. ``hint``: its size hint, 0 to MAX_HINT."""
        self._last_place += 1
        self._line(record).append(record, self._last_place << HINT_BITS | hint)
        self.counts[record.method] = self.counts.get(record.method, 0) + 1
        self.hints += hint

    def schedule(self, record: TaskRecord, hint: int = 0) -> None:
        """Keep a task SCHEDULED until its ``due_at``, in a new place. ``hint`` as for :meth:`append`."""
        self._last_place += 1
        self._places[record.id] = self._last_place
        heapq.heappush(self._scheduled, (record.due_at or 0.0, self._last_place << HINT_BITS | hint, record))
        self.hints += hint

    def hold(self, record: TaskRecord) -> None:
        """A new task went to a node without waiting in line: it gets a new place, kept for a requeue."""
        self._last_place += 1
        self._places[record.id] = self._last_place

    def requeue(self, record: TaskRecord) -> None:
        """Queue a held (or retried) task again, in its old place."""
        self.counts[record.method] = self.counts.get(record.method, 0) + 1
        place = self._places.pop(record.id, None)
        if self._orphans.get(id(record)):
            self._forget_orphan(record)  # the last entry it left is in its place: it is its own again
            return
        if place is None:  # cannot be: a task out of line has its place kept
            self._last_place += 1
            place = self._last_place
        heapq.heappush(self._line(record).back, (place << HINT_BITS, record))

    def leave(self, record: TaskRecord) -> None:
        """A QUEUED task left its line (claimed, retried or ended: call this once its state is the new
        one): its entry stays behind, an orphan."""
        self._uncount(record.method)
        self._orphans[id(record)] = self._orphans.get(id(record), 0) + 1
        self._orphaned += 1
        if self._orphaned > SWEEP_OVER and self._orphaned > sum(self.counts.values()):
            self._sweep()

    def forget(self, task_ids: Iterable[str]) -> None:
        """These tasks ended: they will not be requeued, nor become due."""
        places = self._places
        for task_id in task_ids:
            places.pop(task_id, None)

    def take(self, lanes: Iterable[tuple[str, str]], limit: int) -> list[TaskRecord]:
        """Up to ``limit`` QUEUED tasks of these (queue, method) lanes, the highest priority first, then the
        lowest place, out of line (the store makes them ASSIGNED): their places are kept for a requeue."""
        taken: list[TaskRecord] = []
        lines = [line for lane in lanes for line in self._lanes.get(lane, ()) if line]
        while lines and len(taken) < limit:
            top = max(line.priority for line in lines) if len(lines) > 1 else lines[0].priority
            top_lines = [line for line in lines if line.priority == top]
            if len(top_lines) == 1:
                records, keys = top_lines[0].pop(limit - len(taken))
            else:
                records, keys = _merged(top_lines, limit - len(taken))
            self._keep_queued(records, keys, taken)
            lines = [line for line in lines if line]
        return taken

    def _keep_queued(self, records: Sequence[TaskRecord], keys: Sequence[int], taken: list[TaskRecord]) -> None:
        """Of entries just out of their line, add to ``taken`` the ones of tasks in line; drop the rest."""
        places, orphans, counts, hints = self._places, self._orphans, self.counts, 0
        for record, key in zip(records, keys, strict=True):
            if (orphans and id(record) in orphans) or record.state != QUEUED:
                self._drop(record, key)
                continue
            hints += key & MAX_HINT
            places[record.id] = key >> HINT_BITS
            taken.append(record)
            if left := counts[record.method] - 1:
                counts[record.method] = left
            else:
                del counts[record.method]
        self.hints -= hints

    def due(self, now: float, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` SCHEDULED tasks due at ``now`` or earlier, earliest first, put in line in their
        places (the store makes them QUEUED)."""
        due: list[TaskRecord] = []
        scheduled = self._scheduled
        while scheduled and scheduled[0][0] <= now and len(due) < limit:
            _, key, record = heapq.heappop(scheduled)
            if self._waits_scheduled(record, key):
                del self._places[record.id]
                heapq.heappush(self._line(record).back, (key, record))
                self.counts[record.method] = self.counts.get(record.method, 0) + 1
                due.append(record)
            else:
                self.hints -= key & MAX_HINT
        return due

    def next_due(self) -> float | None:
        """The earliest ``due_at`` of a SCHEDULED task, or None."""
        scheduled = self._scheduled
        while scheduled:
            due_at, key, record = scheduled[0]
            if self._waits_scheduled(record, key):
                return due_at
            heapq.heappop(scheduled)  # revoked, or forgotten: dropped lazily
            self.hints -= key & MAX_HINT
        return None

    def first_in_line(self) -> dict[str, TaskRecord]:
        """The QUEUED task in the lowest place, by method (only methods with some)."""
        firsts: dict[str, tuple[int, TaskRecord]] = {}
        for (_, method), lane in self._lanes.items():
            for line in lane:
                while line:
                    key, record = line.first()
                    if self._in_line(record):
                        if method not in firsts or key < firsts[method][0]:
                            firsts[method] = (key, record)
                        break
                    line.drop(1)
                    self._drop(record, key)
        return {method: record for method, (_, record) in firsts.items()}

    def _in_line(self, record: TaskRecord) -> bool:
        """Whether the first of a task's entries still in line is its own (not an orphan)."""
        return record.state == QUEUED and not (self._orphans and id(record) in self._orphans)

    def _waits_scheduled(self, record: TaskRecord, key: int) -> bool:
        """Whether a scheduled entry is its task's: not revoked since, nor left from a forgotten task."""
        return record.state == SCHEDULED and self._places.get(record.id) == key >> HINT_BITS

    def _line(self, record: TaskRecord) -> _Line:
        lane = self._lanes.get((record.queue, record.method))
        if lane is None:
            lane = self._lanes[(record.queue, record.method)] = []
        for line in lane:
            if line.priority == record.priority:
                return line
        lane.append(_Line(record.priority))
        return lane[-1]

    def _uncount(self, method: str) -> None:
        left = self.counts[method] - 1
        if left:
            self.counts[method] = left
        else:
            del self.counts[method]

    def _drop(self, record: TaskRecord, key: int) -> None:
        """An entry out of its line that is not its task's: its hint uncounted, an orphan forgotten."""
        self.hints -= key & MAX_HINT
        if self._orphans and id(record) in self._orphans:
            self._forget_orphan(record)
            if record.state in (ASSIGNED, RETRY):  # out of line: a requeue puts it back here
                self._places[record.id] = key >> HINT_BITS

    def _forget_orphan(self, record: TaskRecord) -> None:
        left = self._orphans[id(record)] - 1
        if left:
            self._orphans[id(record)] = left
        else:
            del self._orphans[id(record)]
        self._orphaned -= 1

    def _sweep(self) -> None:
        """Drop every orphan: take every entry out of its line, in order, and put back the ones in line."""
        for lane in self._lanes.values():
            for line in lane:
                entries: list[tuple[TaskRecord, int]] = []
                while line:
                    records, keys = line.front(len(line))
                    line.drop(len(records))
                    entries.extend(zip(records, keys, strict=True))
                for record, key in entries:
                    if self._in_line(record):
                        line.append(record, key)
                    else:
                        self._drop(record, key)
