"""Connecting to Redis for :class:`~zerotask.store.redis.RedisStore`, and what its errors mean for the broker.

Only this module and the ones that use it import redis-py (the ``redis`` extra): the package imports
without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from zerotask.store.base import StoreUnavailable

try:
    import hiredis
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.crc import key_slot
    from redis.retry import Retry
    from redis.sentinel import Sentinel
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError("the Redis store needs redis-py: pip install 'zerotask[redis]'") from error

log = logging.getLogger("zerotask.store")

Redis = redis.Redis  # for the other modules of the store, which import redis-py through this one

# A dead Redis stalls a call for at most about this long: the broker's loop must go on (it refuses work).
SOCKET_TIMEOUT_S = 1.0
# Errors that say "Redis cannot take this now", not "this call is wrong": a failover (READONLY, MASTERDOWN),
# a restart (LOADING), a long script (BUSY), a full memory (OOM: maxmemory is the store's bound).
_UNAVAILABLE_REPLIES = ("READONLY", "MASTERDOWN", "LOADING", "BUSY", "OOM", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS")
# The same from a Redis Cluster, which redis-py raises as classes of their own (the word cut off): MOVED and
# ASK say the slot is served elsewhere now (find its master again), and a resharding or failover is under way.
_REDIRECTS = (redis.exceptions.AskError,)  # MovedError is one
_CLUSTER_BUSY = (*_REDIRECTS, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def connection_options(socket_timeout_s: float = SOCKET_TIMEOUT_S) -> dict[str, Any]:
    """What every connection of the store is opened with: short timeouts, and one quick retry after a
    connection error (a pooled connection that Redis closed, as after its restart). A timeout is not
    retried: the command may have run, and a second wait would double the stall."""
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.02), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 0,
    }


CLUSTER_SCHEME = "redis+cluster://"


def connect(spec: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> Redis:
    """A client for ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS, with redis-py's
    query options such as ``ssl_cert_reqs``), or ``redis+sentinel://[:password@]host:port,host:port/MASTER/db``
    (the master named MASTER, found and followed through a failover by the sentinels; the password is the
    master's). Connects lazily: an unreachable Redis shows at the first call."""
    options = connection_options(socket_timeout_s)
    if not spec.startswith("redis+sentinel://"):
        return redis.Redis.from_url(spec, **options)
    parts = urlsplit(spec)
    sentinels, username, password = _hosts(parts.netloc, 26379)
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2 or not sentinels:
        raise ValueError(f"expected redis+sentinel://host:port[,host:port...]/MASTER[/db], got {spec!r}")
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    if len(path) == 2:
        query["db"] = path[1]
    db = int(query.pop("db", "0"))
    sentinel = Sentinel(sentinels, sentinel_kwargs=connection_options(socket_timeout_s), **options)
    master: Redis = sentinel.master_for(unquote(path[0]), db=db, username=username, password=password, **query)
    return master


def _hosts(netloc: str, default_port: int) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``([(host, port), ...], username, password)`` of ``[user:password@]host:port,host:port``."""
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    addresses = []
    for host in hosts.split(",") if hosts else []:
        name, _, port = host.rpartition(":")
        addresses.append((name.strip("[]") or "localhost", int(port or default_port)))
    return addresses, unquote(username) or None, unquote(password) or None


class Pending:
    """The replies of commands sent ahead (:meth:`Link.send`): :meth:`result` reads them, when needed."""

    __slots__ = ("_link", "packed", "count", "replies", "error")

    def __init__(self, link: Link, packed: list[bytes], count: int) -> None:
        self._link, self.packed, self.count = link, packed, count
        self.replies: list[Any] | None = None
        self.error: BaseException | None = None

    def result(self) -> list[Any]:
        """The replies (errors as values, as :meth:`Link.run`'s); raises redis-py's errors."""
        if self.replies is None and self.error is None:
            self._link.collect()
        if self.error is not None:
            raise self.error
        assert self.replies is not None
        return self.replies


class Link:
    """The store's own connection to Redis, taken from ``client``'s pool once and kept: a round trip packs
    its commands with hiredis, sends them in one write and reads the replies in order. This is what a
    redis-py pipeline does, at a fifth of the CPU (no pool, packer or callbacks per call), so replies are
    raw (RESP2: HGETALL answers a flat list). A connection error is retried as the client's ``retry``
    says (on a fresh connection); a timeout is not (the commands may have run). The store calls it from one
    thread only.

    :meth:`send` sends commands without waiting for their replies, so that the broker works while Redis
    does (one such call outstanding at a time: sending another, or running any call, reads its replies first)."""

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None
        self._outstanding: Pending | None = None

    def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, errors (ResponseError) as values; raises redis-py's errors."""
        return self.send(commands).result()

    def send(self, commands: list[tuple[Any, ...]]) -> Pending:
        """Send ``commands`` now; their replies are read by the returned Pending's ``result()`` (or first
        thing in the next call), which also says if they could not be sent."""
        self.collect()
        # one write for all: redis-py writes each item of a list with a syscall of its own, and Redis may
        # wake up for each (with TCP_NODELAY, each is a segment of its own)
        pending = Pending(self, [b"".join([hiredis.pack_command(command) for command in commands])], len(commands))
        connection = self._connected()
        try:
            if connection._sock is None:
                connection.connect()
            connection.send_packed_command(pending.packed, check_health=False)
        except redis.ConnectionError:
            connection.disconnect()  # (a write to a connection Redis closed: the read says so, and sends again)
        self._outstanding = pending
        return pending

    def collect(self) -> None:
        """Read the replies of what :meth:`send` sent, if not yet read: into its Pending, errors too. A
        connection lost meanwhile sends the commands again on a fresh one (once: the client's ``retry``)."""
        pending, self._outstanding = self._outstanding, None
        if pending is None:
            return
        connection, sent = self._connection, [False]

        def attempt() -> list[Any]:
            if not sent[0] and connection._sock is not None:
                sent[0] = True
                return self._read(connection, pending.count)
            return self._round_trip(connection, pending.packed, pending.count)

        try:
            pending.replies = connection.retry.call_with_retry(attempt, lambda error: connection.disconnect())
        except Exception as error:  # for the Pending's owner to see
            pending.error = error
            connection.disconnect()  # what it still owes us must not be read as another call's replies

    def answer_fileno(self) -> int | None:
        """The socket the outstanding answer comes on (None if none is outstanding, or not connected)."""
        if self._outstanding is None or self._connection is None or self._connection._sock is None:
            return None
        fd: int = self._connection._sock.fileno()
        return fd

    def _connected(self) -> Any:
        if self._connection is None:
            self._connection = self._pool.get_connection()
        return self._connection

    @staticmethod
    def _round_trip(connection: Any, packed: list[bytes], count: int) -> list[Any]:
        if connection._sock is None:  # connect() as the pool does: through Sentinel, it asks for the master
            connection.connect()
        connection.send_packed_command(packed, check_health=False)
        return Link._read(connection, count)

    @staticmethod
    def _read(connection: Any, count: int) -> list[Any]:
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as error:  # in-band: the next reply follows
                replies.append(error)
        return replies

    def close(self) -> None:
        if self._outstanding is not None:
            self._outstanding.error, self._outstanding = redis.ConnectionError("the store closed its connection"), None
        if self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None


class Route:
    """Where a store's commands go: the one Redis of ``spec`` (:func:`connect`), or, for
    ``redis+cluster://[user:password@]host:port,host:port`` (a Redis Cluster, database 0), the master that
    holds the slot of ``key``. A store's keys share one hash tag, so that one master serves them all; it is
    found from the nodes' ``CLUSTER SLOTS`` at the first call, and again after a reply says the slot moved
    (MOVED, ASK: the commands did not run; the call raises StoreUnavailable and the next one goes to the new
    master) or the connection to it was lost (its master failed over). :attr:`client` is the Redis it
    talks to now (the store's notifications follow it)."""

    def __init__(self, spec: str, key: str, socket_timeout_s: float = SOCKET_TIMEOUT_S, client: Redis | None = None) -> None:
        self._timeout_s = socket_timeout_s
        self._seeds: list[tuple[str, int]] = []
        self._slot = key_slot(key.encode())
        self._auth: dict[str, Any] = {}
        if client is None and spec.startswith(CLUSTER_SCHEME):
            parts = urlsplit(spec)
            self._seeds, username, password = _hosts(parts.netloc, 6379)
            if not self._seeds or parts.path.strip("/") not in ("", "0"):
                raise ValueError(f"expected redis+cluster://[user:password@]host:port[,host:port...][/0], got {spec!r}")
            self._auth = {"username": username, "password": password}
        self._owns_client = client is None
        self._address = self._seeds[0] if self._seeds else None
        if client is None:
            client = self._client_for(self._address) if self._address else connect(spec, socket_timeout_s)
        self.client = client
        self._link = Link(self.client)
        self._stale = bool(self._seeds)  # a cluster's master for the slot is asked at the first call
        self._found = False

    def _client_for(self, address: tuple[str, int]) -> Redis:
        return redis.Redis(host=address[0], port=address[1], **self._auth, **connection_options(self._timeout_s))

    def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """:meth:`Link.run` on the current master."""
        return self.replies(self.send(commands))

    def send(self, commands: list[tuple[Any, ...]]) -> Pending:
        """:meth:`Link.send` to the current master; read the replies with :meth:`replies`."""
        if self._stale:
            self._find_master()
        return self._link.send(commands)

    def answer_fileno(self) -> int | None:
        """Readable when the answer of what :meth:`send` sent arrives; None if nothing waits for one."""
        return self._link.answer_fileno()

    def replies(self, pending: Pending) -> list[Any]:
        """What :meth:`run` would have answered for the commands of ``pending``."""
        try:
            replies = pending.result()
        except redis.ConnectionError:
            self._stale = bool(self._seeds)
            raise
        if self._seeds and any(isinstance(reply, _REDIRECTS) for reply in replies):
            self._stale = True
        return replies

    def _find_master(self) -> None:
        for host, port in self._seeds:
            probe = self._client_for((host, port))
            try:
                ranges = probe.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue  # ask the next
            finally:
                probe.close()
            for start, end, master, *_ in ranges:
                if start <= self._slot <= end:
                    address = (master[0].decode() or host, int(master[1]))
                    if address != self._address:
                        if self._found:  # (the first time, it was only a seed)
                            log.warning("Redis Cluster: slot %d (the store's keys) is served by %s:%d now", self._slot, *address)
                        self.close()
                        self._address, self.client = address, self._client_for(address)
                        self._link = Link(self.client)
                    self._stale, self._found = False, True
                    return
        raise unavailable_error(redis.ConnectionError(f"no node of the Redis Cluster says which master holds slot {self._slot}"))

    def close(self) -> None:
        self._link.close()
        if self._owns_client:
            self.client.close()


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means Redis cannot serve now (the call may succeed later)."""
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError | redis.OutOfMemoryError):
        return True
    if isinstance(error, _CLUSTER_BUSY):
        return True
    return isinstance(error, redis.ResponseError) and str(error).startswith(_UNAVAILABLE_REPLIES)


def unavailable_error(error: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"Redis is unavailable: {type(error).__name__}: {error}")


@contextmanager
def reaching_redis() -> Iterator[None]:
    """Turn the errors that mean "Redis cannot serve now" into StoreUnavailable."""
    try:
        yield
    except redis.RedisError as error:
        if is_unavailable(error):
            raise unavailable_error(error) from error
        raise


def is_missing_script(reply: Any) -> bool:
    """Whether a round trip's reply says the script was not run because Redis does not have it (NOSCRIPT)."""
    return isinstance(reply, redis.exceptions.NoScriptError)


def check(reply: Any) -> Any:
    """A reply of :meth:`Link.run` (errors as values): itself, or its error raised."""
    if isinstance(reply, redis.RedisError):
        if is_unavailable(reply):
            raise unavailable_error(reply) from reply
        raise reply
    return reply
