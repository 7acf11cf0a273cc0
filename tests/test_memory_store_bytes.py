"""The memory store's queue in few bytes per task: what a queued task costs the store, and that the lines
it keeps tasks in (in chunks, with tasks put back in their places and entries left behind) keep the
contract's order, and give back the room of the tasks that leave them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
import uuid

import pytest

from tests.test_store_contract import Clock, ReferenceStore, run_in_lockstep
from tests.test_store_contract import clock as clock
from zerotask.exceptions import QueueFull
from zerotask.store import MemoryStore, Outcome, TaskRecord, memory_queue
from zerotask.store.memory import INFLATION, PACK_OVER_BYTES
from zerotask.wire import REVOKED


def test_a_queued_task_costs_the_store_less_than_64_bytes() -> None:
    """Its record in a dict and its place in its line: ~40 bytes (a heap of tuples and three dicts by id
    took ~200). The record itself, its id and its arguments are the caller's, made before."""
    count = 80_000  # the dict of records nearly full: a million tasks cost the same per task
    records = [TaskRecord(uuid.uuid4().hex, "add", [n, n], created_at=1.0) for n in range(count)]
    store = MemoryStore()
    tracemalloc.start()
    try:
        for record in records:
            assert store.add(record, 100)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used / count < 64


def test_a_small_task_size_hint_fits_the_key_of_its_place() -> None:
    assert PACK_OVER_BYTES <= memory_queue.MAX_HINT


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tiny_chunks_and_frequent_sweeps_keep_the_contract(monkeypatch: pytest.MonkeyPatch, clock: Clock, seed: int) -> None:
    """The contract's random operations, with lines of three entries a chunk and orphans swept past two:
    every chunk boundary and sweep lands between a task and the ones put back around it."""
    monkeypatch.setattr(memory_queue, "CHUNK", 3)
    monkeypatch.setattr(memory_queue, "SWEEP_OVER", 2)
    run_in_lockstep([ReferenceStore(), MemoryStore()], seed=seed, steps=3_000, clock=clock)


def test_many_tasks_across_chunks_are_taken_in_order_and_requeued_in_their_places() -> None:
    store = MemoryStore()
    ids = [f"t{n}" for n in range(3 * memory_queue.CHUNK + 5)]
    for n, task_id in enumerate(ids):
        assert store.add(TaskRecord(task_id, "a" if n % 3 else "b"))
    (first,) = store.take_many([(["a", "b"], memory_queue.CHUNK + 7)])
    assert [record.id for record in first] == ids[: memory_queue.CHUNK + 7]
    store.requeue([first[0].id, first[-1].id, first[5].id])
    store.claim([ids[-1]])  # left behind at the back
    (rest,) = store.take_many([(["a", "b"], len(ids))])
    expected = [ids[0], ids[5], ids[memory_queue.CHUNK + 6], *ids[memory_queue.CHUNK + 7 : -1]]
    assert [record.id for record in rest] == expected
    store.requeue([ids[-1]])
    assert [record.id for record in store.take_many([(["a", "b"], 10)])[0]] == [ids[-1]]


def test_taken_tasks_give_their_room_back() -> None:
    store = MemoryStore(max_bytes=INFLATION * 100 * 10)
    for n in range(10):
        assert store.add(TaskRecord(f"t{n}", "add"), 100)
    with pytest.raises(QueueFull):
        store.add(TaskRecord("more", "add"), 100)
    assert len(store.take_many([(["add"], 10)])[0]) == 10
    for n in range(10):
        assert store.add(TaskRecord(f"u{n}", "add"), 100)


def test_tasks_revoked_where_nobody_takes_give_their_room_back_but_a_sweep() -> None:
    """Entries left behind in a line nobody takes from are swept out once there are more of them than
    SWEEP_OVER and than queued tasks: all but that many give their room back."""
    count = 3 * memory_queue.SWEEP_OVER
    store = MemoryStore(max_bytes=INFLATION * 100 * count)
    ids = [f"t{n}" for n in range(count)]
    for task_id in ids:
        assert store.add(TaskRecord(task_id, "nobody"), 100)
    with pytest.raises(QueueFull):
        store.add(TaskRecord("more", "nobody"), 100)
    assert all(store.finish_many([Outcome(task_id, REVOKED) for task_id in ids]))
    assert store.state_counts() == {REVOKED: count}
    for n in range(count - memory_queue.SWEEP_OVER):
        assert store.add(TaskRecord(f"u{n}", "nobody"), 100)
    assert store.queued_counts() == {"nobody": count - memory_queue.SWEEP_OVER}


def test_a_queued_task_with_packed_arguments_costs_about_their_length() -> None:
    """20,000 tasks of ~2 KB arguments, packed: orjson's bytes kept the buffer they were written in, about
    8 KB of RSS each; a copy keeps ~2 KB. Measured in a fresh process, whose RSS no earlier test inflated."""
    script = textwrap.dedent(
        """
        from zerotask.store import MemoryStore, TaskRecord
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        records = [TaskRecord(f"t{n}", "add", ["x" * 50] * 40) for n in range(20_000)]
        store = MemoryStore()
        before = rss()
        for record in records:
            assert store.add(record, 2_200)
        print((rss() - before) / len(records))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    per_task = float(done.stdout)
    print(f"{per_task:.0f} bytes of RSS per task with 2,121 bytes of packed arguments")
    assert per_task < 4_000
