"""How a :class:`~zerotask.store.redis.RedisStore` talks to Redis: its keys and scripts, the adds it
buffers (written first thing by its next call, in the same round trip), and calls sent ahead, whose
replies are read when they are needed, so that the broker works while Redis does."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from zerotask.store.base import MAX_REMEMBERED_METHODS, TaskRecord
from zerotask.store.redis_buffer import Command, QueuedCounts, WriteBuffer
from zerotask.store.redis_client import Redis, Route, check, is_missing_script, reaching_redis
from zerotask.store.redis_layout import KEY_NAMES, held_key, pairs
from zerotask.store.redis_scripts import SCRIPTS, source


class RedisCalls:
    def __init__(
        self, url: str, prefix: str, queue: str, client: Redis | None, socket_timeout_s: float, max_buffered_bytes: int
    ) -> None:
        if not prefix or not queue or any(brace in queue for brace in "{}"):
            raise ValueError("prefix and queue must be non-empty, and queue without braces (it is the hash tag)")
        self.prefix, self.queue = prefix, queue
        base = f"{prefix}:{{{queue}}}:"
        self._route = Route(url, base, socket_timeout_s, client)
        self._base = base
        instance = uuid.uuid4().hex  # this store's replies are its own
        self._keys = [base + name + (f":{instance}" if name.startswith("reply:") else "") for name in KEY_NAMES]
        self._keys.append(held_key(base, ""))  # this broker's held tasks: another key once attached
        self._methods_key = base + "methods"  # sorted set: task name -> when a node last announced it
        self._channel = base + "events:"  # and the broker's id: each broker hears on a channel of its own
        self._shas = {name: hashlib.sha1(source(name).encode()).hexdigest() for name in SCRIPTS}
        self._me = ""  # the broker id, once attached
        self._buffer = WriteBuffer(max_buffered_bytes)
        self._refused: list[TaskRecord] = []  # adds the buffer's writes found existing, for the next flush
        self._queued: dict[str, int] = {}  # as the last reply brought them
        self._counts = QueuedCounts()  # with the adds not written yet

    def _send(self, commands: list[Command]) -> Callable[[], list[Any]]:
        """Send ``commands`` now, after the buffer's writes, in the same write; the function
        returned reads their replies (errors raised), waiting for them if need be. Adds that were not
        written go back to the buffer: reading raises then if ``commands`` is empty (a flush), else the
        next flush says why."""
        batch = self._buffer.detach() if self._buffer else None
        flushing = batch.commands(self._script, self._methods_key, MAX_REMEMBERED_METHODS) if batch is not None else []
        sent = flushing + commands
        try:
            with reaching_redis():
                pending = self._route.send(sent)
        except BaseException:
            if batch is not None:
                self._buffer.restore(batch)
            raise

        def replies() -> list[Any]:
            try:
                with reaching_redis():
                    answers = self._again_if_missing(sent, self._route.replies(pending))
            except BaseException:
                if batch is not None:
                    self._buffer.restore(batch)
                raise
            if batch is not None:
                try:
                    self._written(batch, answers[: len(flushing)])
                except Exception:
                    if not commands:
                        raise
            return [check(answer) for answer in answers[len(flushing) :]]

        return replies

    def _run(self, commands: list[Command]) -> list[Any]:
        """Run ``commands`` in one round trip, after writing the buffer; returns their replies (errors
        raised). A buffer that failed to be written stays buffered: the next flush raises."""
        return self._send(commands)()

    def _again_if_missing(self, sent: list[Command], replies: list[Any]) -> list[Any]:
        """``replies``, with the commands that found their script missing run again after loading them all."""
        missing = [i for i, reply in enumerate(replies) if is_missing_script(reply)]
        if missing:  # Redis restarted, or its scripts were flushed: those commands did not run
            loads: list[Command] = [("SCRIPT", "LOAD", source(name)) for name in SCRIPTS]
            again = self._route.run(loads + [sent[i] for i in missing])[len(SCRIPTS) :]
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _written(self, batch: WriteBuffer, replies: list[Any]) -> None:
        """Take in the replies of a detached batch's commands; if Redis refused them, buffer it again and raise."""
        try:
            written = [check(reply) for reply in replies]
        except Exception:
            self._buffer.restore(batch)
            raise
        refused, queued = batch.written(written[0] if batch.records else None)
        self._refused += refused
        if queued is not None:
            self._counted(queued)
        else:
            self._counts.merge(self._queued, self._buffer.counts)

    def _script(self, name: str, *args: Any, keys: Sequence[str] = ()) -> Command:
        all_keys = [*self._keys, *keys]
        return ("EVALSHA", self._shas[name], len(all_keys), *all_keys, self._me, repr(time.time()), self._channel, *args)

    def _read(self, name: str, *args: Any, keys: Sequence[str] = ()) -> Any:
        """Run a script that answers without the queued counts; returns its answer."""
        return self._run([self._script(name, *args, keys=keys)])[0]

    def _call(self, name: str, *args: Any, keys: Sequence[str] = ()) -> Any:
        """Run a writing script; returns its answer and keeps the queued counts it sends along."""
        answer, queued = self._run([self._script(name, *args, keys=keys)])[0]
        self._counted(queued)
        return answer

    def _counted(self, reply: dict[bytes, bytes] | list[bytes]) -> None:
        """Keep the queued counts: a reply of HGETALL or of a script."""
        self._queued = {method.decode(): int(count) for method, count in pairs(reply)}
        self._counts.merge(self._queued, self._buffer.counts)

    def _key(self, name: str) -> str:
        return self._keys[KEY_NAMES.index(name)]
