"""CURVE keys and who may connect: certificate files, the keys a node or a client uses, the broker's list
of admitted keys with their roles, and its ZAP handler.

Keys live in pyzmq's certificate files (:func:`zmq.auth.create_certificates`): ``NAME.key`` holds the
public key, ``NAME.key_secret`` both. A broker is given its own secret certificate and, per role, a
directory of public certificates (``--clients``, ``--nodes``, ``--admins``); a node or a client is given
its secret certificate and the broker's public one (or ZEROTASK_CURVE_SECRET and ZEROTASK_BROKER_KEY).

The :class:`Gatekeeper` answers libzmq's ZAP requests in a thread of the broker's ZeroMQ context: a peer
whose key is not listed never completes its handshake, and the messages of one that is carry its public
key (Z85) as their ``User-Id``, which the broker maps to roles per message
(:mod:`zerotask.broker.security`). Refusals are logged at WARNING, rate-limited.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from zerotask.sockets import Context, CurveKeys, Socket

log = logging.getLogger("zerotask.auth")

ENV_CURVE_SECRET = "ZEROTASK_CURVE_SECRET"
ENV_BROKER_KEY = "ZEROTASK_BROKER_KEY"

CLIENT = "client"  # may submit and call tasks, and query and revoke its own
NODE = "node"  # may register as a node and use the node methods; may also call tasks (subtasks)
ADMIN = "admin"  # may do what a client does, on any task
ROLES = (CLIENT, NODE, ADMIN)


# ---- certificate files -------------------------------------------------------------------------------


def create_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``DIRECTORY/NAME.key`` (the public certificate) and ``DIRECTORY/NAME.key_secret`` (mode 0600);
    returns their paths. Raises FileExistsError rather than overwrite a key, ValueError for a name that
    is not a plain file name."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ValueError(f"invalid key name {name!r}: a plain file name, such as 'broker' or 'node-1'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists: not overwriting a key (remove it first)")
    # The secret file exists, empty and private, before the key is written into it: never readable by
    # others, not even for a moment. O_EXCL: two commands racing for the name cannot share it.
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        zmq.auth.create_certificates(folder, name)
    except BaseException:
        secret.unlink(missing_ok=True)
        raise
    return public, secret


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret certificate; ValueError saying what is wrong with it."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as problem:
        raise ValueError(f"cannot read the CURVE certificate {path}: {problem}") from None
    if secret is None:
        raise ValueError(f"{path} holds no secret key: give the NAME.key_secret file that `zerotask keys NAME` wrote")
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The public key of a certificate (a NAME.key file, or a NAME.key_secret); ValueError if unreadable."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as problem:
        raise ValueError(f"cannot read the CURVE certificate {path}: {problem}") from None
    return public


def peer_keys(curve_secret: str | Path | None = None, broker_key: str | Path | None = None) -> CurveKeys | None:
    """The CURVE keys of a node or a client: its own secret certificate and the broker's public one, each
    from the argument, else from ZEROTASK_CURVE_SECRET / ZEROTASK_BROKER_KEY. None when neither is set
    (plaintext); ValueError when only one is, or a file cannot be used."""
    curve_secret = curve_secret or os.environ.get(ENV_CURVE_SECRET) or None
    broker_key = broker_key or os.environ.get(ENV_BROKER_KEY) or None
    if curve_secret is None and broker_key is None:
        return None
    if curve_secret is None or broker_key is None:
        missing = "curve_secret (ZEROTASK_CURVE_SECRET)" if curve_secret is None else "broker_key (ZEROTASK_BROKER_KEY)"
        raise ValueError(f"CURVE needs both this peer's secret certificate and the broker's public one: {missing} is missing")
    public, secret = load_secret(curve_secret)
    return CurveKeys(public, secret, load_public(broker_key))


# ---- the broker's side -------------------------------------------------------------------------------


class Keyring:
    """The public keys a broker admits, each with its roles: ``Keyring({"client": DIR, ...})`` reads every
    ``*.key`` in each directory. A key listed in several directories has every one of their roles. Read
    once, at start: restart the broker to admit or drop a key."""

    def __init__(self, directories: Mapping[str, str | Path]) -> None:
        roles: dict[str, set[str]] = {}
        self.counts: dict[str, int] = {}
        for role, directory in directories.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
            try:
                keys = zmq.auth.load_certificates(directory)
            except (OSError, ValueError) as problem:
                raise ValueError(f"cannot read the {role} keys in {directory}: {problem}") from None
            self.counts[role] = len(keys)
            for key in keys:
                roles.setdefault(key.decode("ascii"), set()).add(role)
        self._roles = {key: frozenset(granted) for key, granted in roles.items()}

    def roles(self, key: str | None) -> frozenset[str]:
        """The roles of a public key (Z85); empty for a key that is not listed."""
        return self._roles.get(key, frozenset()) if key is not None else frozenset()

    def __contains__(self, key: object) -> bool:
        return key in self._roles


class RateLimitedLog:
    """Logs at WARNING at most ``burst`` lines per ``period_s``, so that a flood of refused peers cannot
    fill the disk; the next line logged says how many were left out. Thread-safe."""

    def __init__(self, logger: logging.Logger, burst: int = 10, period_s: float = 60.0) -> None:
        self._logger = logger
        self._burst = burst
        self._period_s = period_s
        self._lock = threading.Lock()
        self._window = -period_s
        self._logged = 0
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window >= self._period_s:
                self._window, self._logged = now, 0
            if self._logged >= self._burst:
                self._left_out += 1
                return
            self._logged += 1
            left_out, self._left_out = self._left_out, 0
        if left_out:
            message, args = f"{message} (%d more refusal(s) not logged)", (*args, left_out)
        self._logger.warning(message, *args)


class Gatekeeper(ThreadAuthenticator):
    """The broker's ZAP handler (pyzmq's ThreadAuthenticator), in a thread of the broker's own context:
    admits a CURVE peer whose public key is in ``keyring`` and refuses anything else, logging each refusal.
    The ZAP reply's User-Id is the peer's public key (Z85). Start it before the CURVE sockets bind: with no
    handler, libzmq would admit any key."""

    def __init__(self, context: Context, keyring: Keyring, refusals: RateLimitedLog) -> None:
        super().__init__(context, log=logging.getLogger("zerotask.auth.zap"))  # pyzmq's own lines, at DEBUG
        self.keyring = keyring
        self._refusals = refusals
        self._address = ""
        self.configure_curve_callback("*", self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # One request at a time, in this thread: the peer's address, kept for the refusal's log line.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        if len(msg) > 5 and msg[5] != b"CURVE":  # no socket here asks for another mechanism: fail closed
            self._refusals.warning("refused a peer from %s: mechanism %r, not CURVE", self._address, msg[5])
            self._send_zap_reply(msg[1], b"400", b"CURVE required")
            return
        try:
            await super().handle_zap_message(msg)
        except Exception:  # a bug must refuse the peer, not leave the thread dead (the handshake would hang)
            log.exception("the ZAP handler failed: refusing the peer from %s", self._address)
            try:
                self._send_zap_reply(msg[1], b"500", b"internal error")
            except zmq.ZMQError:
                pass

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: whether ``key`` (Z85) may connect."""
        if key.decode("ascii", "replace") in self.keyring:
            return True
        self._refusals.warning(
            "refused a CURVE peer from %s: its public key %s is in none of --clients, --nodes, --admins",
            self._address,
            key.decode("ascii", "replace"),
        )
        return False


_HANDSHAKE_FAILURES: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "it does not speak CURVE (a plaintext peer, or one given no keys)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a cryptographic error (a peer given the wrong broker key?)",
}


class HandshakeWatch:
    """Logs the peers of a CURVE socket whose handshake failed before ZAP could see them (a plaintext
    peer, a wrong broker key), from the socket's monitor; libzmq tells the socket's own endpoint, not the
    peer's address. Register :attr:`monitor` with the loop, calling :meth:`on_event`."""

    def __init__(self, sock: Socket, refusals: RateLimitedLog) -> None:
        self._sock = sock
        self._refusals = refusals
        # A plaintext peer sees the mismatch too and may hang up first: the broker then sees NO_DETAIL, not
        # PROTOCOL. ZAP refusals (AUTH) the Gatekeeper logs itself, with the key.
        events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        self.monitor: Socket = sock.get_monitor_socket(events)

    def on_event(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            value = int(event["value"])
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # value: an errno
                reason = f"the peer hung up ({os.strerror(value)}): a plaintext peer, or one that gave up"
            else:
                reason = _HANDSHAKE_FAILURES.get(value, f"ZMTP protocol error {value:#x}")
            endpoint = event["endpoint"].decode("utf-8", "replace")
            self._refusals.warning("refused a peer on %s: handshake failed, %s", endpoint, reason)

    def close(self) -> None:
        self._sock.disable_monitor()
        self.monitor.close(linger=0)
