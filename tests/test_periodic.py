"""Periodic tasks: the schedules (pure functions), the broker's side in-process, and a real broker
running a task every half second however many nodes serve it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zerotask.broker.periodic import Periodic, Schedule, read_schedule, slot_task_id
from zerotask.store import MemoryStore
from zerotask.task import Dispatcher, task
from zerotask.testing import Cluster, ManualClock, scaled, wait_until

EPOCH = 1_700_000_000.0  # a multiple of 10 and of 60: slots fall on it


def test_every_falls_on_multiples_of_its_period_since_the_epoch() -> None:
    schedule = Schedule(every_s=10)
    assert schedule.latest(EPOCH + 3) == EPOCH
    assert schedule.following(EPOCH + 3) == EPOCH + 10
    assert schedule.following(EPOCH) == EPOCH + 10


def test_cron_slots_are_read_by_croniter_in_utc() -> None:
    schedule = Schedule(cron="*/5 * * * *")
    now = EPOCH + 7 * 60 + 30  # 7.5 minutes past a whole hour (EPOCH is 22:13:20 UTC: 22:20:50)
    assert schedule.latest(now) % 300 == 0 and now - 300 < schedule.latest(now) <= now
    assert schedule.following(now) == schedule.latest(now) + 300


def test_a_schedule_announced_by_a_node_is_checked() -> None:
    assert read_schedule({"every": 60}) == Schedule(every_s=60)
    assert read_schedule({"cron": "0 * * * *", "queue": "io"}) == Schedule(cron="0 * * * *")
    for bad in ({"every": 0}, {"every": True}, {"every": "60"}, {"cron": "every day"}, {"every": 60, "cron": "* * * * *"}, 5):
        assert read_schedule(bad) is None


def test_the_decorator_refuses_what_no_schedule_could_be() -> None:
    dispatcher = Dispatcher()
    # @hourly and February 30th: croniter takes them, the broker ignores them (five fields, a slot that exists),
    # so the decorator refuses them where the author sees it.
    cron = ("no", "@hourly", "0 0 30 2 *", "* * * * * *")
    for options in ({"every": 0}, *({"cron": bad} for bad in cron), {"every": 1, "cron": "* * * * *"}):
        with pytest.raises(ValueError):
            task(dispatcher=dispatcher, **options)(lambda: None)  # type: ignore[arg-type]
    assert task(dispatcher=dispatcher, cron="0 0 29 2 *")(lambda: None)  # a leap day exists


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    clock = ManualClock()
    monkeypatch.setattr(time, "time", lambda: EPOCH + 3 + clock.now)
    return clock


def test_each_slot_runs_once_however_many_brokers_share_the_store(wall: ManualClock) -> None:
    store = MemoryStore()
    submitted: list[tuple[str, str]] = []
    brokers = [Periodic(store, wall, lambda name, task_id: submitted.append((name, task_id))) for _ in range(2)]
    for broker in brokers:
        broker.announce({"report": {"every": 10}, "add": {"queue": "io"}})
    assert submitted == [("report", slot_task_id("report", EPOCH))]  # the latest slot, at once: the catch-up
    wall.advance(7)  # EPOCH + 10
    wall.advance(10)  # EPOCH + 20
    assert submitted[1:] == [("report", slot_task_id("report", EPOCH + 10)), ("report", slot_task_id("report", EPOCH + 20))]


def test_missed_slots_run_once_when_the_schedule_is_known_again(wall: ManualClock) -> None:
    store = MemoryStore()
    submitted: list[str] = []
    Periodic(store, wall, lambda name, task_id: submitted.append(task_id)).announce({"report": {"every": 10}})
    wall.advance(100)  # the broker was down: ten slots passed
    restarted = Periodic(store, ManualClock(), lambda name, task_id: submitted.append(task_id))
    restarted.announce({"report": {"every": 10}})
    assert submitted[-1] == slot_task_id("report", EPOCH + 100) and submitted.count(submitted[-1]) == 1


def test_a_real_broker_runs_a_periodic_task_once_per_period_with_two_nodes_serving_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = tmp_path / "ticks.txt"
    monkeypatch.setenv("ZEROTASK_TEST_TICKS", str(ticks))
    with Cluster() as cluster:
        cluster.start_broker()
        cluster.start_node("tests.periodic_tasks")
        cluster.start_node("tests.periodic_tasks")
        wait_until(lambda: ticks.exists() and len(ticks.read_text().split()) >= 5, 20, "five ticks")
    times = sorted(float(line) for line in ticks.read_text().split())
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    print(f"tick gaps: {', '.join(f'{gap:.3f}' for gap in gaps)}")
    # The first tick is the catch-up run of the slot just passed, which the next slot may follow closely.
    assert min(gaps[1:]) > 0.25, "a slot ran twice"  # the period is 0.5 s
    assert max(gaps) < 0.5 + scaled(1)
