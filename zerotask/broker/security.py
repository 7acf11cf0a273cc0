"""The broker's security: CURVE on its sockets, who may connect, who sent each message, and what they may do.

Without keys the broker is open to whoever reaches its sockets, so it binds only to this machine unless
told ``insecure``. With a secret certificate and directories of public ones, both sockets are CURVE
servers and the ZAP handler (:class:`zerotask.auth.Gatekeeper`) admits listed keys only. Each message's
sender is its ``User-Id`` (the public key that sent it, read per message: a routing id is the peer's own
choice), and the sender's roles decide:

- every listed key may submit and call tasks, and use ping, info and rpc.discover; only a node key may use the node
  methods (connect, request, running, finished, release, heartbeat, disconnect): others get Forbidden;
- only an admin key may use the operator methods (inspect, tasks, task, retry, purge);
- a task belongs to the key that submitted it (stored with it, so it survives a restart): status,
  result, revoke and notify of a task are for that key and admin keys; to any other key the task does
  not exist (UnknownTask, as for an id never used), and submitting under its id is Forbidden.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from zerotask import auth, sockets, wire
from zerotask.exceptions import Forbidden, UnknownTask
from zerotask.store import TaskRecord

log = logging.getLogger("zerotask.broker")

NODE_METHODS = frozenset(
    {wire.CONNECT, wire.REQUEST, wire.RUNNING_TASKS, wire.FINISHED_TASKS, wire.RELEASE, wire.HEARTBEAT, wire.DISCONNECT}
    | {wire.REPORT_PROGRESS}
)
ADMIN_METHODS = frozenset({wire.INSPECT, wire.TASKS, wire.TASK, wire.RETRY_TASK, wire.PURGE})
Receive = Callable[[], list[bytes]]
AddSocket = Callable[[sockets.Socket, Callable[[], None]], None]


class Security:
    """``Security([bind, publish], curve_secret, clients=DIR, nodes=DIR, admins=DIR)``: raises ValueError,
    saying why, for keys it cannot use, or for an endpoint other machines can reach without CURVE (unless
    ``insecure``). :attr:`keys` is what the broker's sockets get (None: plaintext). ``Security()`` is open:
    no CURVE, and every peer may do everything."""

    def __init__(
        self,
        endpoints: Sequence[str] = (),
        curve_secret: str | Path | None = None,
        clients: str | Path | None = None,
        nodes: str | Path | None = None,
        admins: str | Path | None = None,
        insecure: bool = False,
    ) -> None:
        named = ((auth.CLIENT, clients), (auth.NODE, nodes), (auth.ADMIN, admins))
        directories = {role: folder for role, folder in named if folder}
        self.keys: sockets.CurveKeys | None = None
        self.keyring: auth.Keyring | None = None
        self.exposed = [endpoint for endpoint in endpoints if not sockets.is_local(endpoint)]
        self.sender: str | None = None  # the public key (Z85) that sent the message being handled
        self._refusals = auth.RateLimitedLog(log)
        self._gatekeeper: auth.Gatekeeper | None = None
        self._watches: list[auth.HandshakeWatch] = []
        if curve_secret is None:
            if directories:
                raise ValueError("--clients, --nodes and --admins need --curve-secret, the broker's own secret certificate")
            if self.exposed and not insecure:
                raise ValueError(
                    f"refusing to bind {' and '.join(self.exposed)} without CURVE: anyone who can reach it could run any"
                    " task and read any result. Give --curve-secret and --clients/--nodes/--admins (see `zerotask keys`),"
                    " bind to 127.0.0.1, or accept the risk with --insecure"
                )
            return
        if not directories:
            raise ValueError("--curve-secret needs --clients, --nodes or --admins: the directories of the public keys it admits")
        public, secret = auth.load_secret(curve_secret)
        self.keys = sockets.CurveKeys(public, secret)
        self.keyring = auth.Keyring(directories)
        self.exposed = []

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self, context: sockets.Context) -> None:
        """Start the ZAP handler (with CURVE); call before the broker's sockets bind."""
        if self.exposed:
            log.warning("--insecure: %s without CURVE, open to anyone who can reach it", " and ".join(self.exposed))
        if self.keyring is not None:
            self._gatekeeper = auth.Gatekeeper(context, self.keyring, self._refusals)
            self._gatekeeper.start()
            counts = ", ".join(f"{count} {role} key(s)" for role, count in self.keyring.counts.items())
            log.info("CURVE on: admitting %s", counts)

    def watch(self, sock: sockets.Socket, add_socket: AddSocket) -> None:
        """With CURVE, log the peers whose handshake fails on ``sock`` (plaintext, wrong broker key)."""
        if self.enabled:
            watch = auth.HandshakeWatch(sock, self._refusals)
            self._watches.append(watch)
            add_socket(watch.monitor, watch.on_event)

    def stop(self) -> None:
        for watch in self._watches:
            watch.close()
        self._watches = []
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
            self._gatekeeper = None

    # ---- who sent this -----------------------------------------------------------------------------

    def receiver(self, sock: sockets.Socket) -> Receive:
        """What reads one message from ``sock`` (NOBLOCK: raises zmq.Again when none is waiting). With CURVE
        it also sets :attr:`sender` from the message's User-Id; without, it skips that cost."""
        if not self.enabled:
            return sockets.router_receiver(sock)

        def receive() -> list[bytes]:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                user_id = frames[-1].get("User-Id")
            except zmq.ZMQError:  # no User-Id: not from a peer ZAP admitted, so it may do nothing
                user_id = None
            self.sender = user_id if isinstance(user_id, str) else None
            return [frame.bytes for frame in frames]

        return receive

    # ---- what the sender may do --------------------------------------------------------------------

    def check(self, method: str) -> None:
        """Raise Forbidden unless the sender's roles allow ``method``."""
        if self.keyring is None:
            return
        roles = self.keyring.roles(self.sender)
        if method in NODE_METHODS:
            if auth.NODE not in roles:
                raise Forbidden(f"{method} is for nodes: this key is not a node key", {"method": method})
        elif method in ADMIN_METHODS:
            if auth.ADMIN not in roles:
                raise Forbidden(f"{method} is for operators: this key is not an admin key", {"method": method})
        elif not roles:
            raise Forbidden("this key is not admitted", {"method": method})

    @property
    def owner(self) -> str | None:
        """The owner to store with a task the sender submits: its public key (None without CURVE)."""
        return self.sender if self.keyring is not None else None

    def may_see(self, record: TaskRecord) -> bool:
        """Whether the sender may query, wait for or revoke this task: its owner, or an admin key."""
        if self.keyring is None:
            return True
        return record.owner == self.sender or auth.ADMIN in self.keyring.roles(self.sender)

    def visible(self, record: TaskRecord) -> TaskRecord:
        """The task, if the sender may see it; else UnknownTask, as for an id never used."""
        if not self.may_see(record):
            raise UnknownTask(f"unknown task id {record.id!r}", {"task_id": record.id})
        return record

    def reusable(self, record: TaskRecord) -> TaskRecord:
        """The task a submit or call refers to, new or existing, if the sender may use it; else Forbidden:
        its id is another key's task, which it may neither wait for nor queue again."""
        if not self.may_see(record):
            raise Forbidden(f"task id {record.id!r} is taken by another key's task", {"task_id": record.id})
        return record
