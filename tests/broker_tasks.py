"""A broker method, for `zerotask broker tests.broker_tasks` (the seed's custom broker task)."""

from zerotask import task


@task(name="broker.new_hotness")
def new_hotness() -> int:
    return 42
