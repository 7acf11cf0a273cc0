"""Tasks for the worker-defect tests (`zerotask node tests.tasks tests.defect_tasks`)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from zerotask import task


@task
def die(how: str) -> None:
    """End the worker process in the middle of the task, the way a crash would."""
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


@task
def pid_after(path: str, seconds: float) -> int:
    """Leave our pid in ``path``, sleep, then return the pid: which worker ran us, and whether it lived."""
    with open(path + ".tmp", "w") as pid_file:
        pid_file.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return os.getpid()


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class CustomBaseException(BaseException):
    pass


_RAISE: dict[str, Callable[[], BaseException]] = {
    "unprintable": UnprintableError,
    "surrogate": lambda: ValueError("bad \ud800 text"),
    "keyboard_interrupt": KeyboardInterrupt,
    "generator_exit": GeneratorExit,
    "custom_base": lambda: CustomBaseException("beyond Exception"),
}


@task
def raise_kind(kind: str) -> None:
    """Raise what ``kind`` names; "system_exit" calls sys.exit(3)."""
    if kind == "system_exit":
        sys.exit(3)
    raise _RAISE[kind]()


@task
def surrogate_result() -> Any:
    return {"text": "bad \udcff text"}
