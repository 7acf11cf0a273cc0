"""The Redis store's write buffer (pure: no Redis): what the add script gets for the tasks it buffered."""

from __future__ import annotations

from typing import Any

from zerotask.store import TaskRecord
from zerotask.store.redis_buffer import WriteBuffer
from zerotask.store.redis_flow import ADD_FIELDS


def add_call(buffer: WriteBuffer) -> tuple[Any, ...]:
    (call,) = buffer.commands(lambda *args: args, "methods", 10)
    return call


def test_only_tasks_with_a_due_at_or_an_owner_cost_the_add_script_more_arguments() -> None:
    buffer = WriteBuffer(1 << 20)
    buffer.add(TaskRecord("plain", "a"))
    buffer.add(TaskRecord("owned", "a", owner="key"))
    name, _, count, specials, *rest = add_call(buffer)
    assert (name, count, specials, len(rest)) == ("add", 2, 1, 2 * ADD_FIELDS + 3)
    assert rest[:ADD_FIELDS:ADD_FIELDS] == ["plain"] and rest[2 * ADD_FIELDS :] == [2, "", "+key"]


def test_a_batch_put_back_keeps_the_places_of_what_was_buffered_since() -> None:
    """A batch whose write failed goes back before the tasks buffered meanwhile: theirs move along."""
    buffer = WriteBuffer(1 << 20)
    buffer.add(TaskRecord("owned", "a", owner="key"))
    buffer.add(TaskRecord("plain", "a"))
    batch = buffer.detach()
    buffer.add(TaskRecord("later", "a", due_at=4e9))
    buffer.restore(batch)
    _, _, count, specials, *rest = add_call(buffer)
    assert (count, specials) == (3, 2)
    assert rest[: 3 * ADD_FIELDS : ADD_FIELDS] == ["owned", "plain", "later"]
    assert rest[3 * ADD_FIELDS :] == [1, "", "+key", 3, "4000000000.0", ""]
