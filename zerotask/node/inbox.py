"""How the node's loop and a thread pool's threads wake each other: an eventfd (a pipe where there is
none) and, for a thread, an :class:`Inbox` of batches to run (:mod:`zerotask.node.threads`)."""

from __future__ import annotations

import os
import sys
import threading
from collections import deque

from zerotask.node.outcome import Task

ONE = (1).to_bytes(8, sys.byteorder)  # what an eventfd adds to its counter; one byte in a pipe as well


class Inbox:
    """What the node's loop hands one pool thread (:meth:`put`), which the thread waits for (:meth:`get`)
    reading an eventfd of its own. The loop's write (os.write) lets go of the GIL: a thread woken
    there, on the loop's CPU (the usual case: it preempts the loop), takes the GIL at once and runs
    its task. Woken by a queue.SimpleQueue, it found the GIL held and had to wait for the loop's next
    poll, being woken twice more on the way (perf sched: 2.6 wake-ups a task, now 1)."""

    def __init__(self) -> None:
        self._items: deque[list[Task] | None] = deque()
        self._reader, self._writer = wake_pair(blocking=True)
        self._lock = threading.Lock()  # the thread may close it as the loop puts: never write a closed descriptor

    def put(self, item: list[Task] | None) -> None:
        """Hand over a batch, or None: the end (nothing after it is read)."""
        with self._lock:
            if self._writer >= 0:
                self._items.append(item)
                os.write(self._writer, ONE)

    def get(self) -> list[Task] | None:
        """The next item, waiting for it."""
        while not self._items:
            os.read(self._reader, 8)  # a put after the check has left the count above 0: no wait
        return self._items.popleft()

    def close(self) -> None:
        """Release the descriptors, as the thread ends; a put after this does nothing."""
        with self._lock:
            if self._reader >= 0:
                os.close(self._reader)
                if self._writer != self._reader:
                    os.close(self._writer)
                self._reader = self._writer = -1


def wake_pair(blocking: bool = False) -> tuple[int, int]:
    """An eventfd (reader and writer are the same descriptor), or a pipe where there is none;
    non-blocking unless ``blocking``."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_CLOEXEC | (0 if blocking else os.EFD_NONBLOCK))
        return fd, fd
    reader, writer = os.pipe()
    os.set_blocking(reader, blocking)
    os.set_blocking(writer, blocking)
    return reader, writer
