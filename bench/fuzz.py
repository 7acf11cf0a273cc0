"""``python -m bench.fuzz``: hostile peers against a real broker. Does it stay up, bounded and serving?

From the repository root, ``python -m bench.fuzz [--messages N] [--seed S] [--store memory|sqlite] [--peers K]``
starts a broker and one node serving ``bench.tasks`` (:class:`zerotask.testing.Cluster`), queues tasks, then
floods the broker from K raw ZeroMQ sockets while a well-behaved :class:`~zerotask.client.Client`, in a
process of its own, calls ``add`` every few milliseconds and times each call. The traffic:

- ``rpc``: JSON-RPC shapes (requests, notifications, batches, responses, malformed objects) for every
  ``zerotask.broker.*`` method and task names, with wrong, absurd, huge, deeply nested, unicode and
  NaN-like params and ids of every type, from bare DEALERs, a DEALER that adds the delimiter frame, and a
  REQ with REQ_RELAXED and REQ_CORRELATE; some DEALERs never read what the broker answers.
- ``frames``: random frame counts, empty frames, random bytes, invalid UTF-8.
- ``liar``: peers that connect as nodes with absurd params, grant enormous or negative credit, report
  outcomes for the tasks they are sent (deeply nested, huge, asking for retries), release and reconnect.
- ``subscribe``: subscription messages of any size on the event socket.
- ``huge``: now and then one message near (or past) the broker's 16 MiB limit.

Every value is built as JSON text, so it can be what no encoder writes (NaN, 1e400, lone surrogates, 1,000
levels). The seed fixes the plan (which kind of message, from which peer, when, and which huge ones); the
content comes from a second seeded source and also follows what the broker answered (the tasks a liar was
sent, the ids it learned), so two runs with one seed agree in plan and differ in detail. The liars never claim the one name the
real node serves (``add``): an unauthenticated peer taking another's tasks is a matter for CURVE, not for
bounds. The fuzzer's own sockets are bounded: SNDHWM and RCVHWM set, LINGER=0, every send NOBLOCK with a
short bounded wait, and a message that still cannot go is counted as dropped.

The broker's RSS is read from /proc by this process (never inside the timed calls); the broker runs with an
address-space limit (``--max-broker-gib``), so an amplification found here fails the broker, not the
machine. The exit status is non-zero if the broker or the node died, a well-behaved call failed, or a task
queued before the flood did not finish with its right result.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing
import random
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import zmq

from zerotask import wire
from zerotask.client import Client
from zerotask.testing import Cluster, ManagedProcess, scaled

MIB = 1024 * 1024
MESSAGE_LIMIT = 16 * MIB  # the broker's default --max-message-bytes
SERVED = "add"  # the one task of bench.tasks, harmless whatever its arguments
LIAR_NAMES = ("fuzz.a", "fuzz.b", "fuzz.c")  # names only lying nodes serve: their tasks never end
TASK_NAMES = (SERVED, *LIAR_NAMES, "nope", "", "zerotask.broker.nope", "zerotask.", "broker.x", "rpc.x", "ädd", "\u0000", "🦄")
CONTROL = (
    *(wire.SUBMIT, wire.CALL, wire.STATUS, wire.RESULT, wire.REVOKE, wire.NOTIFY, wire.PING, wire.INFO),
    *(wire.CONNECT, wire.REQUEST, wire.RUNNING_TASKS, wire.FINISHED_TASKS, wire.RELEASE, wire.HEARTBEAT, wire.DISCONNECT),
)
TEXTS = ("", "a", "é", "日本語", "🦄", "\u202eevil", "\u0000", "\ufeff", "e\u0301", "\\", '"', "\n", "null", wire.PING, "fz-1")
NUMBERS = (
    *("0", "-0", "1", "-1", "7", "0.5", "-2.5", "1.0", "1E3", "-0.0", "5e-324", "1e308", "-1e308"),
    *("9223372036854775807", "-9223372036854775808", "18446744073709551615", "18446744073709551616", "1" * 40),
)
NOT_JSON = ("NaN", "Infinity", "-Infinity", "1e400", "01", ".5", "+1", "0x1F", '"\\ud800"', "'x'", "tru", "[1,]", "{,}")
SECONDS = ("0", "-1", "0.001", "0.05", "1", "604800", "604801", "1e9", "1e300", '"1"', "true", "null", "-0.0", "[]")
COUNTS = ("-9223372036854775808", "-1", "0", "1", "2", "1000000000", "9223372036854775807", "18446744073709551615", "1.5", "true")
FLAGS = ("true", "false", "null", "0", "1", '"true"')
DEPTHS = (10, 199, 200, 201, 208, 209, 253, 254, 255, 1000, 1024, 1025)
INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc3\x28", b"\xe2\x82")
LIAR_METHODS = (*(wire.REQUEST,) * 3, *(wire.FINISHED_TASKS,) * 3, wire.RUNNING_TASKS, wire.RELEASE, wire.HEARTBEAT)
HUGE_KINDS = ("notify", "connect", "submit", "add-lists", "garbage", "over-limit", "batch-info", "batch-result")
KINDS = ("dealer", "liar", "deaf", "req", "delimited", "raw", "liar", "sub", "deaf-liar")  # the order --peers fills


def _js(value: Any) -> str:
    return orjson.dumps(value).decode()


# ---- the traffic ---------------------------------------------------------------------------------------


class Shapes:
    """JSON-RPC-shaped and raw traffic from a seeded random source. Values are JSON text."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.known: collections.deque[str] = collections.deque(maxlen=1000)  # task ids the broker told us
        self.ids: list[tuple[str, str]] = []  # (request id, method) of the requests in the message being built
        self._counter = itertools.count()
        self.held: list[str] = []  # for a liar's message: the tasks it was sent
        self._fields: dict[str, list[tuple[str, Callable[[], str]]]] = {
            wire.SUBMIT: self._call_fields(),
            wire.CALL: self._call_fields(),
            wire.STATUS: [("task_id", self.task_id)],
            wire.RESULT: [("task_id", self.task_id), ("wait", self._flag), ("timeout_s", self._seconds)],
            wire.REVOKE: [("task_id", self.task_id)],
            wire.NOTIFY: [("task_ids", self.id_list)],
            wire.PING: [],
            wire.INFO: [],
            wire.CONNECT: [
                ("node", lambda: _js(self.text())),
                ("methods", self.method_list),
                ("workers", self._count),
                ("credit", self._count),
                ("running", self.id_list),
            ],
            wire.REQUEST: [("credit", self._count)],
            wire.RUNNING_TASKS: [("task_ids", self.id_list)],
            wire.FINISHED_TASKS: [("tasks", self.outcomes)],
            wire.RELEASE: [("task_ids", self.id_list), ("draining", self._flag)],
            wire.HEARTBEAT: [],
            wire.DISCONNECT: [],
        }

    def _call_fields(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("method", lambda: _js(self.method_name())),
            ("args", lambda: self.container("[")),
            ("kwargs", lambda: self.container("{")),
            ("task_id", self.task_id),
            ("notify", self._flag),
            ("time_limit_s", self._seconds),
        ]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def _flag(self) -> str:
        return self.rng.choice(FLAGS)

    def _seconds(self) -> str:
        return self.rng.choice(SECONDS)

    def _count(self) -> str:
        return self.rng.choice(COUNTS)

    # ---- values

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(TEXTS)
        if r < 0.85:
            return "".join(chr(self.rng.randrange(32, 0x3000)) for _ in range(self.rng.randrange(1, 12)))
        if r < 0.998:
            return self.rng.choice("xyz") * self.rng.choice((64, 128, 129, 1000))
        return "x" * self.rng.choice((65536, MIB))

    def scalar(self) -> str:
        r = self.rng.random()
        if r < 0.01:
            return self.rng.choice(NOT_JSON)
        if r < 0.3:
            return self.rng.choice(NUMBERS)
        if r < 0.4:
            return str(self.rng.randint(-(10**6), 10**6))
        if r < 0.5:
            return self.rng.choice(("null", "true", "false"))
        return _js(self.text())

    def value(self, depth: int = 0) -> str:
        r = self.rng.random()
        if r < 0.01:
            return self.deep()
        if depth >= 3 or r < 0.6:
            return self.scalar()
        return self.container("[" if r < 0.8 else "{", depth)

    def container(self, opening: str, depth: int = 0) -> str:
        if self.chance(0.05):
            return self.value(depth + 1)  # not a container at all
        items = (self.value(depth + 1) for _ in range(self.rng.randrange(0, 5)))
        if opening == "[":
            return "[" + ",".join(items) + "]"
        return "{" + ",".join(f"{_js(self.text())}:{item}" for item in items) + "}"

    def deep(self) -> str:
        depth = self.rng.choice(DEPTHS)
        if self.chance(0.5):
            return "[" * depth + self.scalar() + "]" * depth
        return '{"a":' * depth + self.scalar() + "}" * depth

    def task_id(self) -> str:
        r = self.rng.random()
        if self.held and r < 0.5:
            return _js(self.rng.choice(self.held))
        if r < 0.6:
            return _js(f"fz-{self.rng.randrange(500)}")
        if r < 0.75 and self.known:
            return _js(self.rng.choice(self.known))
        if r < 0.85:
            return _js(f"{self.rng.getrandbits(128):032x}")
        if r < 0.95:
            return _js(self.text())
        return self.rng.choice(("null", "1", "-1", "1.5", "true", "[]", "{}", _js("x" * 129)))

    def id_list(self) -> str:
        r = self.rng.random()
        if r < 0.003:
            return _js([f"fz-{i}" for i in range(self.rng.choice((10_000, 10_001)))])
        if r < 0.005:
            return "[" + ",".join([_js(f"fz-{self.rng.randrange(500)}")] * 100_000) + "]"
        if r < 0.05:
            return self.value()
        return "[" + ",".join(self.task_id() for _ in range(self.rng.randrange(0, 6))) + "]"

    def method_name(self) -> str:
        return self.rng.choice(TASK_NAMES) if self.chance(0.85) else self.text()

    def method_list(self) -> str:
        r = self.rng.random()
        if r < 0.003:
            count = self.rng.choice((10_000, 10_001))
            return _js([f"fuzz.{self.rng.getrandbits(64):x}.{i}" for i in range(count)])
        if r < 0.05:
            return self.value()
        if r < 0.1:
            return "{" + ",".join(f"{_js(name)}:{self.value()}" for name in self.rng.sample(LIAR_NAMES, 2)) + "}"
        names = [_js(self.rng.choice(LIAR_NAMES) if self.chance(0.6) else self.text()) for _ in range(self.rng.randrange(0, 6))]
        names = [name for name in names if name != _js(SERVED)]
        return "[" + ",".join(names) + "]"

    def error_object(self) -> str:
        if self.chance(0.1):
            return self.value()
        data = {"type": "ValueError", "message": "boom", "traceback": ""}
        members = [_js(key) + ":" + _js(value) for key, value in data.items()]
        if self.chance(0.5):
            members.append('"retry_in_s":' + self._seconds())
        return (
            '{"code":'
            + self.rng.choice(("-32000", "-32601", "0", "1.5", '"x"'))
            + ',"message":'
            + self.scalar()
            + (',"data":{' + ",".join(members) + "}}")
        )

    def outcomes(self) -> str:
        items = []
        for _ in range(self.rng.randrange(0, 5)):
            r = self.rng.random()
            if r < 0.45:
                items.append('{"task_id":' + self.task_id() + ',"result":' + self.value() + "}")
            elif r < 0.9:
                items.append('{"task_id":' + self.task_id() + ',"error":' + self.error_object() + "}")
            else:
                items.append(self.value())
        return "[" + ",".join(items) + "]"

    def params(self, method: str) -> str | None:
        """Params for ``method``: mostly the right names and positions with one absurd value, or none."""
        fields = self._fields.get(method, [])
        r = self.rng.random()
        if r < 0.04:
            return None
        if r < 0.08:
            return self.value()
        values = [(name, make()) for name, make in fields]
        if values and self.chance(0.3):
            index = self.rng.randrange(len(values))
            values[index] = (values[index][0], self.value())
        if self.chance(0.6):
            members = [f"{_js(name)}:{value}" for name, value in values if not self.chance(0.1)]
            if self.chance(0.1):
                members.append(f"{_js(self.text())}:{self.value()}")
            return "{" + ",".join(members) + "}"
        cut = len(values) if self.chance(0.7) else self.rng.randrange(len(values) + 1)
        extra = [self.value()] if self.chance(0.1) else []
        return "[" + ",".join([value for _, value in values[:cut]] + extra) + "]"

    def request_id(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return _js(f"q{next(self._counter)}")  # unique: the reply can be traced to its request
        if r < 0.8:
            return self.rng.choice(("0", "-1", "1.5", "null", "9223372036854775807", "18446744073709551616", "1e308", '""'))
        if r < 0.9:
            return _js(self.text())
        return self.rng.choice(("true", "false", "[]", "{}", '[1,"a"]', '{"id":1}', "1e400"))

    # ---- messages

    def request(self, method: str, params: str | None, notification: bool) -> str:
        members = ['"jsonrpc":"2.0"', f'"method":{_js(method)}']
        if params is not None:
            members.append(f'"params":{params}')
        if not notification:
            request_id = self.request_id()
            if request_id.startswith('"q'):
                self.ids.append((request_id, method))
            members.append(f'"id":{request_id}')
        self.rng.shuffle(members)
        return "{" + ",".join(members) + "}"

    def malformed(self) -> str:
        good = self.request(wire.PING, None, False)
        return self.rng.choice(
            (
                lambda: self.value(),
                lambda: good.replace('"2.0"', self.rng.choice(('"1.0"', "2.0", "2", "null", '"2.0 "'))),
                lambda: good.replace('"jsonrpc":"2.0",', "").replace(',"jsonrpc":"2.0"', ""),
                lambda: '{"jsonrpc":"2.0","method":' + self.value() + ',"id":' + self.request_id() + "}",
                lambda: (
                    '{"jsonrpc":"2.0","method":"zerotask.broker.ping","method":"add","params":[1,2],"id":'
                    + self.request_id()
                    + "}"
                ),
                lambda: good[:-1] + ',"extra":' + self.value() + "}",
                lambda: good[: self.rng.randrange(len(good))],
                lambda: good + self.rng.choice(("x", "}", " ", "\u0000", good)),
                lambda: '{"jsonrpc":"2.0","method":"add","params":' + self.value() + ',"result":1,"id":1}',
            )
        )()

    def response(self) -> str:
        if self.chance(0.5):
            return '{"jsonrpc":"2.0","result":' + self.value() + ',"id":' + self.request_id() + "}"
        return '{"jsonrpc":"2.0","error":' + self.error_object() + ',"id":' + self.request_id() + "}"

    def item(self) -> tuple[str, str]:
        """One JSON-RPC object: (what it is, its text)."""
        r = self.rng.random()
        if r < 0.45:
            method = self.rng.choice(CONTROL)
            notification = self.chance(0.2)
            return ("notification" if notification else "request"), self.request(method, self.params(method), notification)
        if r < 0.7:
            method = self.method_name()
            notification = self.chance(0.3)
            params = self.container("[" if self.chance(0.7) else "{") if self.chance(0.95) else None
            return ("by-name-notification" if notification else "by-name"), self.request(method, params, notification)
        if r < 0.8:
            return "response", self.response()
        return "malformed", self.malformed()

    def rpc(self) -> tuple[str, str]:
        if self.chance(0.8):
            return self.item()
        r = self.rng.random()
        count = 0 if r < 0.02 else 1000 if r < 0.025 else 1001 if r < 0.03 else self.rng.randrange(1, 12)
        items = [self.item()[1] for _ in range(count)]
        if self.chance(0.05):
            items.append("[" + self.item()[1] + "]")  # a batch inside the batch
        return "batch", "[" + ",".join(items) + "]"

    def liar(self, connected: bool) -> tuple[str, str]:
        """A lying node's message: connect with absurd params, or the node protocol with what it holds."""
        if not connected or self.chance(0.03):
            params = {
                "node": _js(self.text()),
                "methods": self.method_list() if self.chance(0.3) else _js(list(LIAR_NAMES)),
                "workers": self._count(),
                "credit": self._count(),
                "running": self.id_list(),
            }
            members = [f"{_js(name)}:{value}" for name, value in params.items() if not self.chance(0.05)]
            return "connect", self.request(wire.CONNECT, "{" + ",".join(members) + "}", False)
        method = self.rng.choice(LIAR_METHODS)
        if self.chance(0.01):
            method = wire.DISCONNECT
        if self.chance(0.15):
            items = [self.request(m, self.params(m), True) for m in self.rng.sample(CONTROL[8:], 3)]
            return "batch", "[" + ",".join(items) + "]"
        return method.rsplit(".", 1)[1], self.request(method, self.params(method), not self.chance(0.1))

    def frames(self) -> list[bytes]:
        frames = []
        for _ in range(self.rng.choice((1, 1, 2, 2, 2, 3, 4, 8, 30))):
            r = self.rng.random()
            if r < 0.25:
                frames.append(b"")
            elif r < 0.45:
                frames.append(self.rng.randbytes(self.rng.randrange(1, 64)))
            elif r < 0.55:
                frames.append(self.rng.choice(INVALID_UTF8))
            elif r < 0.65:
                payload = self.item()[1].encode()
                at = self.rng.randrange(len(payload) + 1)
                frames.append(payload[:at] + self.rng.choice(INVALID_UTF8) + payload[at:])
            elif r < 0.7:
                frames.append(b"\xef\xbb\xbf" + self.item()[1].encode())  # a byte order mark
            elif r < 0.72:
                frames.append(self.item()[1].encode("utf-16"))
            else:
                frames.append(self.item()[1].encode())
        return frames

    def subscription(self) -> bytes:
        r = self.rng.random()
        size = self.rng.choice((0, 1, 10, 100, 1023, 1024, 1025, 65536)) if r < 0.9 else 0
        topic = self.rng.randbytes(size) if self.chance(0.5) else b"x" * size
        return (b"\x01" if self.chance(0.7) else b"\x00" if self.chance(0.8) else self.rng.randbytes(1)) + topic

    def huge(self, kind: str) -> list[bytes]:
        """One message near (or past) the broker's size limit, of ``kind`` (one of HUGE_KINDS)."""
        room = MESSAGE_LIMIT - 4096
        if kind == "notify":
            payload = self.request(wire.NOTIFY, "[[" + ",".join(['"fz-1"'] * (room // 7)) + "]]", False)
        elif kind == "connect":
            names = [f"fuzz.{i:05d}.{'n' * 1500}" for i in range(10_000)]
            payload = self.request(wire.CONNECT, _js({"node": "huge", "methods": names, "credit": 0}), False)
        elif kind == "submit":
            payload = self.request(wire.SUBMIT, _js({"method": SERVED, "args": ["x" * room]}), False)
        elif kind == "add-lists":  # add(a, b) of two lists: a stored result as large as the request
            half = [1] * (room // 5)
            payload = self.request(wire.SUBMIT, _js({"method": SERVED, "args": [half, half], "task_id": "fz-big"}), False)
        elif kind == "garbage":
            return [self.rng.randbytes(room)]
        elif kind == "over-limit":
            return [b" " * (MESSAGE_LIMIT + 1)]
        elif kind == "batch-info":
            payload = "[" + ",".join(self.request(wire.INFO, None, False) for _ in range(1000)) + "]"
        else:
            task_id = _js(self.rng.choice(self.known) if self.known and self.chance(0.5) else "fz-big")
            payload = "[" + ",".join(self.request(wire.RESULT, "[" + task_id + "]", False) for _ in range(1000)) + "]"
        return [payload.encode()]


# ---- the peers ----------------------------------------------------------------------------------------


class Peer:
    """One hostile socket. Bounded: SNDHWM/RCVHWM set, LINGER=0, sends never block for long."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], kind: str, index: int, endpoint: str, publish: str) -> None:
        self.kind, self.index = kind, index
        self.context, self.endpoint, self.publish = context, endpoint, publish
        self.generation = 0
        self.drops_in_row = 0
        self.connected = False  # a liar that was answered as a node
        self.held: collections.deque[str] = collections.deque(maxlen=200)
        self.sent_ids: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()  # id -> (method, message)
        self.socket = self._open()

    @property
    def reads(self) -> bool:
        return not self.kind.startswith("deaf")

    def _open(self) -> zmq.Socket[bytes]:
        self.generation += 1
        kind = zmq.REQ if self.kind == "req" else zmq.XSUB if self.kind == "sub" else zmq.DEALER
        sock: zmq.Socket[bytes] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.RCVHWM, 1000 if self.reads else 1)
        if self.kind == "req":
            sock.setsockopt(zmq.REQ_RELAXED, 1)
            sock.setsockopt(zmq.REQ_CORRELATE, 1)
        if "liar" in self.kind:  # sometimes the same routing id again: ROUTER_HANDOVER takes the old connection over
            sock.setsockopt(zmq.ROUTING_ID, f"liar-{self.index}-{self.generation // 2}".encode())
        sock.connect(self.publish if self.kind == "sub" else self.endpoint)
        return sock

    def reopen(self) -> None:
        self.socket.close(linger=0)
        self.connected = False
        self.socket = self._open()

    def send(self, frames: list[bytes]) -> bool:
        """Send without blocking for more than 20 ms; False if it could not go (our own HWM)."""
        if self.kind == "delimited":
            frames = [b"", *frames]
        for attempt in range(2):
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
                return True
            except zmq.Again:
                # A REQ that cannot send is stuck (see _flood): no use waiting for it.
                if attempt or self.kind == "req" or not self.socket.poll(20, zmq.POLLOUT):
                    return False
        return False

    def remember(self, ids: list[tuple[str, str]], text: str) -> None:
        for request_id, method in ids:
            self.sent_ids[request_id] = (method, text[:300])
            if len(self.sent_ids) > 4096:
                self.sent_ids.popitem(last=False)

    def drain(self, stats: Stats, shapes: Shapes, budget: int = 2000) -> None:
        """Read and check what the broker sent us (if this peer reads at all)."""
        if not self.reads:
            return
        for _ in range(budget):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # Again, or a REQ with nothing outstanding
                return
            if self.kind == "sub":
                stats.count("events", "messages")
                continue
            if self.kind == "delimited" and (len(frames) != 2 or frames[0] != b""):
                stats.problem(f"a reply lost its delimiter frame: {[f[:40] for f in frames]!r}")
            self._check(frames[-1], stats, shapes)

    def _check(self, payload: bytes, stats: Stats, shapes: Shapes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            stats.problem(f"the broker sent something that is not JSON: {payload[:200]!r}")
            return
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
                stats.problem(f"the broker sent something that is not JSON-RPC 2.0: {payload[:200]!r}")
            elif "method" in item:
                stats.count("notifications", item["method"])
                params = item.get("params") or {}
                if item["method"] == wire.NODE_RUN and isinstance(params, dict):
                    self.held.extend(task["task_id"] for task in params.get("tasks", []) if isinstance(task, dict))
                elif item["method"] == wire.NODE_RECONNECT:
                    self.connected = False
            elif isinstance(item.get("error"), dict):
                code = item["error"].get("code")
                stats.count("errors", code)
                if type(code) is not int:  # JSON-RPC 2.0, 5.1: "This MUST be an integer"
                    stats.problem(f"an error object whose code is not an integer: {payload[:200]!r}")
                if code == -32603:
                    stats.internal(*self.sent_ids.get(_js(item.get("id")), ("(a request we did not trace)", "")))
            elif "result" in item:
                stats.count("results", "ok")
                result = item["result"]
                if isinstance(result, dict) and "heartbeat_s" in result:
                    self.connected = True
                elif isinstance(result, str) and len(result) == 32:
                    shapes.known.append(result)
            else:
                stats.problem(f"a reply neither result, error nor notification: {payload[:200]!r}")


@dataclass
class Stats:
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped_by_peer: collections.Counter[str] = field(default_factory=collections.Counter)
    reopened: collections.Counter[str] = field(default_factory=collections.Counter)  # sockets started afresh, stuck
    # Where the fuzzer's own time went.
    seconds: collections.defaultdict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    replies: dict[str, collections.Counter[Any]] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    problems: list[str] = field(default_factory=list)
    problem_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    internal_errors: dict[str, str] = field(default_factory=dict)  # the method asked -> a sample message
    internal_count: collections.Counter[str] = field(default_factory=collections.Counter)

    def count(self, group: str, key: Any) -> None:
        self.replies[group][key] += 1

    def problem(self, text: str) -> None:
        """Keep the first sample of each kind of problem (the text up to its colon), and count them all."""
        kind = text.split(":", 1)[0]
        self.problem_counts[kind] += 1
        if self.problem_counts[kind] == 1:
            self.problems.append(text)

    def internal(self, method: str, sent: str) -> None:
        """A -32603 Internal error came back: count it by the method asked, keep a sample."""
        self.internal_count[method] += 1
        self.internal_errors.setdefault(method, sent)


# ---- the well-behaved client ----------------------------------------------------------------------------


def well_behaved(endpoint: str, interval_s: float, timeout_s: float, stop: Any, results: Connection) -> None:
    """In a process of its own: call add(i, 1) every ``interval_s`` until ``stop`` is set; send back
    ``[(start, latency_s, error or None)]`` (monotonic clock, which processes share)."""
    samples: list[tuple[float, float, str | None]] = []
    with Client(endpoint, timeout=timeout_s) as client:
        for i in itertools.count():
            if stop.is_set():
                break
            start = time.monotonic()
            error = None
            try:
                if client.add(i, 1) != i + 1:
                    error = f"add({i}, 1) returned a wrong result"
            except Exception as problem:  # anything at all is a failed call, to report
                error = f"add({i}, 1): {type(problem).__name__}: {problem}"
                client.close()
            samples.append((start, time.monotonic() - start, error))
            time.sleep(interval_s)
    results.send(samples)


# ---- a run ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    messages: int = 1_000_000
    seed: int = 1
    store: str = "memory"
    peers: int = 8
    workers: int = 2
    queued: int = 1000
    call_interval_s: float = 0.02
    huge_every: int = 5000  # one huge message per this many, on average
    max_broker_gib: float = 4.0
    directory: Path | None = None  # for the cluster's logs (kept); a temporary directory by default


@dataclass
class Report:
    options: Options
    stats: Stats = field(default_factory=Stats)
    elapsed_s: float = 0.0
    broker_alive: bool = False
    broker_exit: int | None = None
    node_alive: bool = False
    rss_mib: dict[str, float] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[float, float, str | None]] = field(default_factory=list)
    final_call: str = "not made"
    queued_total: int = 0
    queued_right: int = 0
    queued_problems: list[str] = field(default_factory=list)
    log_findings: collections.Counter[str] = field(default_factory=collections.Counter)
    huge_peaks: list[tuple[str, int, float]] = field(default_factory=list)  # (kind, message number, VmHWM rise MiB)
    log_tail: str = ""

    @property
    def failed_calls(self) -> list[str]:
        return [error for _, _, error in self.calls if error is not None]

    @property
    def errors(self) -> list[str]:
        errors = []
        if not self.broker_alive:
            errors.append(f"the broker died (exit status {self.broker_exit}); its log ends:\n{self.log_tail}")
        if not self.node_alive:
            errors.append("the node died")
        failed = self.failed_calls
        if failed:
            errors.append(f"{len(failed)} well-behaved call(s) failed, the first: {failed[0]}")
        if self.final_call != "ok":
            errors.append(f"the well-behaved call after the flood: {self.final_call}")
        if self.queued_right != self.queued_total:
            errors.append(f"queued tasks finished right: {self.queued_right} of {self.queued_total}; {self.queued_problems[:3]}")
        return errors

    @property
    def ok(self) -> bool:
        return not self.errors


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A field of /proc/PID/status, in MiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(options: Options) -> Report:
    """Start a cluster, queue tasks, flood the broker, and report what became of it."""
    report = Report(options)
    spawn = multiprocessing.get_context("spawn")
    with Cluster(store="memory" if options.store == "memory" else "fuzz.db", directory=options.directory) as cluster:
        broker = cluster.start_broker()
        cap = int(options.max_broker_gib * 1024 * MIB)
        resource.prlimit(broker.pid, resource.RLIMIT_AS, (cap, cap))
        cluster.start_node("bench.tasks", workers=options.workers)
        client = cluster.client(timeout_s=30)
        queued = {client.submit(SERVED, i, 1000): i + 1000 for i in range(options.queued)}
        report.queued_total = len(queued)
        report.rss_mib["start"] = rss_mib(broker.pid)
        stop = spawn.Event()
        receiver, sender = spawn.Pipe(duplex=False)
        caller = spawn.Process(
            target=well_behaved, args=(cluster.endpoint, options.call_interval_s, scaled(10), stop, sender), daemon=True
        )
        caller.start()
        try:
            _flood(options, cluster, broker, report)
        finally:
            stop.set()
            report.calls = receiver.recv() if receiver.poll(scaled(30)) else [(0.0, 0.0, "the client process sent nothing")]
            caller.join(scaled(10))
        _final_checks(cluster, broker, client, queued, report)
    return report


def _flood(options: Options, cluster: Cluster, broker: ManagedProcess, report: Report) -> None:
    # Two random sources: the plan (which kind of message, from which peer, when) depends on the seed alone;
    # the content also depends on what the broker answered (the tasks a liar holds, the ids it learned).
    plan, shapes, stats = random.Random(options.seed), Shapes(random.Random(options.seed + 1)), report.stats
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peers = [Peer(context, KINDS[i % len(KINDS)], i, cluster.endpoint, cluster.publish) for i in range(options.peers)]
    by_kind: dict[str, list[Peer]] = collections.defaultdict(list)
    for peer in peers:
        by_kind[peer.kind].append(peer)
    senders = [p for p in peers if p.kind in ("dealer", "deaf", "req", "delimited")] or peers
    liars = by_kind["liar"] + by_kind["deaf-liar"] or senders
    raw = by_kind["raw"] + by_kind["req"] or senders
    subs = by_kind["sub"]
    start = last_sample = last_check = time.monotonic()
    milestones = {max(1, options.messages * k // 10) for k in range(1, 11)}
    report.windows = [{"start": start, "messages": 0}]
    peak = report.rss_mib["start"]
    try:
        for n in range(1, options.messages + 1):
            began = time.perf_counter()
            shapes.ids = []
            r = plan.random()
            if plan.randrange(options.huge_every) == 0:
                peer = plan.choice(liars if r < 0.2 else senders)
                subkind = plan.choice(HUGE_KINDS)
                kind, frames = "huge/" + subkind, shapes.huge(subkind)
            elif r < 0.55 or (r >= 0.95 and not subs):
                peer = plan.choice(senders)
                subkind, text = shapes.rpc()
                kind, frames = "rpc/" + subkind, [text.encode()]
            elif r < 0.7:
                peer = plan.choice(raw)
                kind, frames = "frames", shapes.frames()
            elif r < 0.95:
                peer = plan.choice(liars)
                shapes.held = list(peer.held)
                # A liar that never reads cannot know whether it is connected: it says connect now and then.
                connected = peer.connected if peer.reads else plan.randrange(50) != 0
                subkind, text = shapes.liar(connected)
                shapes.held = []
                kind, frames = "liar/" + subkind, [text.encode()]
            else:
                peer = plan.choice(subs)
                kind, frames = "subscribe", [shapes.subscription()]
            peak_before = rss_mib(broker.pid, "VmHWM") if kind.startswith("huge/") else 0.0
            built = time.perf_counter()
            stats.seconds["building messages"] += built - began
            sent = peer.send(frames)
            stats.seconds["sending (waits on full sockets included)"] += time.perf_counter() - built
            if sent:
                peer.drops_in_row = 0
                stats.sent[kind] += 1
                if shapes.ids:
                    peer.remember(shapes.ids, frames[-1].decode(errors="replace"))
                if peak_before:  # what one huge message costs the broker at its peak, after a moment
                    for _ in range(30):
                        peer.drain(stats, shapes)
                        time.sleep(0.01)
                    report.huge_peaks.append((kind, n, rss_mib(broker.pid, "VmHWM") - peak_before))
            else:
                stats.dropped[kind] += 1
                stats.dropped_by_peer[peer.kind] += 1
                peer.drops_in_row += 1
                if peer.kind == "req" or peer.drops_in_row >= 5:
                    # A REQ that got a reply it cannot take (a reply to frames in neither shape) has its
                    # connection dropped by libzmq, and then sends nothing; any peer stuck this long: afresh.
                    stats.reopened[peer.kind] += 1
                    peer.reopen()
            if n % 64 == 0:
                began = time.perf_counter()
                for reader in peers:
                    reader.drain(stats, shapes)
                stats.seconds["reading replies"] += time.perf_counter() - began
            if n % 2000 == 0:
                plan.choice(peers).reopen()
            now = time.monotonic()
            if n % 128 == 0 and now - last_sample > 0.25:
                last_sample = now
                peak = max(peak, rss_mib(broker.pid))
            if now - last_check > 1.0:
                last_check = now
                if not broker.alive():
                    break
            if n in milestones:
                report.windows.append({"start": now, "messages": n, "rss": rss_mib(broker.pid)})
    finally:
        report.elapsed_s = time.monotonic() - start
        for _ in range(20):  # what the broker still owes the reading peers, briefly
            for reader in peers:
                reader.drain(stats, shapes)
            time.sleep(0.01)
        report.rss_mib["end (peers connected)"] = rss_mib(broker.pid)
        context.destroy(linger=0)
        report.rss_mib["peak (sampled)"] = max(peak, report.rss_mib["end (peers connected)"])


def _final_checks(cluster: Cluster, broker: ManagedProcess, client: Client, queued: dict[str, int], report: Report) -> None:
    time.sleep(0.5)
    report.rss_mib["after peers closed"] = rss_mib(broker.pid)
    report.rss_mib["peak (VmHWM)"] = rss_mib(broker.pid, "VmHWM")
    report.broker_alive = broker.alive()
    report.node_alive = all(node.alive() for node in cluster.nodes)
    if report.broker_alive:
        with Client(cluster.endpoint, timeout=scaled(10)) as after:
            try:
                start = time.monotonic()
                answer = after.add(20, 22)
                elapsed_ms = (time.monotonic() - start) * 1000
                report.final_call = "ok" if answer == 42 else f"add(20, 22) returned {answer!r}"
                report.windows.append({"start": time.monotonic(), "final_ms": elapsed_ms})
            except Exception as problem:
                report.final_call = f"{type(problem).__name__}: {problem}"
        deadline = time.monotonic() + scaled(30)
        for task_id, expected in queued.items():
            try:
                got = client.result(task_id, timeout=max(0.1, deadline - time.monotonic()))
            except Exception as problem:
                report.queued_problems.append(f"{task_id}: {type(problem).__name__}: {problem}")
                continue
            if got == expected:
                report.queued_right += 1
            else:
                report.queued_problems.append(f"{task_id}: {got!r} instead of {expected}")
    else:
        report.broker_exit = broker.process.poll()
    log = broker.output()
    report.log_tail = "\n".join(log.splitlines()[-15:])
    for match in re.finditer(r"internal error handling (.*)\n(?:.*\n)*?(\w+(?:Error|Exception)\b.*)", log):
        report.log_findings[f"internal error in {match.group(1)}: {match.group(2)[:200]}"] += 1
    for pattern in ("Traceback", "lost \\(", "MemoryError", "stalled"):
        report.log_findings[f"log lines matching {pattern!r}"] += len(re.findall(pattern, log))


# ---- the summary ----------------------------------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def summary(report: Report) -> str:
    o, stats = report.options, report.stats
    sent, dropped = sum(stats.sent.values()), sum(stats.dropped.values())
    lines = [
        f"zerotask fuzz: {o.messages:,} messages, seed {o.seed}, {o.store} store, {o.peers} hostile peers, "
        f"node: bench.tasks with {o.workers} workers, broker address space capped at {o.max_broker_gib:g} GiB",
        f"messages: {sent:,} sent, {dropped:,} dropped at our own high-water marks, in {report.elapsed_s:.1f} s"
        f" ({sent / max(report.elapsed_s, 1e-9):,.0f}/s)",
        "  by kind: " + ", ".join(f"{kind} {count:,}" for kind, count in sorted(stats.sent.items())),
        "  dropped by peer: "
        + (", ".join(f"{kind} {count:,}" for kind, count in stats.dropped_by_peer.most_common()) or "none")
        + "; stuck sockets started afresh: "
        + (", ".join(f"{kind} {count:,}" for kind, count in stats.reopened.most_common()) or "none"),
        "  the fuzzer's time: " + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in stats.seconds.items()),
    ]
    for group, counter in sorted(stats.replies.items()):
        lines.append(f"  received {group}: " + ", ".join(f"{key} {count:,}" for key, count in counter.most_common(12)))
    if report.huge_peaks:
        rises = ", ".join(f"{kind} (#{n:,}) +{rise:,.0f}" for kind, n, rise in report.huge_peaks)
        lines.append(f"  peak RSS rise (VmHWM, MiB) within 0.3 s of each huge message: {rises}")
    lines.append(f"broker alive: {'yes' if report.broker_alive else 'NO'}; node alive: {'yes' if report.node_alive else 'NO'}")
    lines.append("broker RSS MiB: " + ", ".join(f"{key} {value:,.0f}" for key, value in report.rss_mib.items()))
    lines.append("  progress   messages  elapsed s  RSS MiB  calls  p50 ms  p99 ms  max ms  failed")
    for before, window in itertools.pairwise(report.windows):
        if "messages" not in window:
            continue
        calls = [(latency, error) for start, latency, error in report.calls if before["start"] <= start < window["start"]]
        ms = [latency * 1000 for latency, _ in calls]
        failed = sum(1 for _, error in calls if error)
        progress = f"{round(100 * before['messages'] / o.messages)}-{round(100 * window['messages'] / o.messages)}%"
        lines.append(
            f"  {progress:>9} {window['messages']:>10,} {window['start'] - report.windows[0]['start']:>10.1f}"
            f" {window.get('rss', 0):>8,.0f} {len(ms):>6} {_percentile(ms, 0.5):>7.1f} {_percentile(ms, 0.99):>7.1f}"
            f" {max(ms, default=float('nan')):>7.1f} {failed:>7}"
        )
    ok = sum(1 for _, _, error in report.calls if error is None)
    final = next((w["final_ms"] for w in report.windows if "final_ms" in w), None)
    final_text = f" ({final:.1f} ms)" if final is not None else ""
    failed = len(report.failed_calls)
    lines.append(f"well-behaved calls: {ok:,} ok, {failed:,} failed; after the flood: {report.final_call}{final_text}")
    lines.append(f"queued tasks finished with the right result: {report.queued_right} of {report.queued_total}")
    lines.append(f"internal errors (-32603) received: {sum(stats.internal_count.values()):,}")
    for method, count in stats.internal_count.most_common():
        lines.append(f"  {count:,} to {method}, e.g. {stats.internal_errors[method][:240]}")
    lines.append("broker log: " + (", ".join(f"{key}: {n}" for key, n in report.log_findings.items() if n) or "nothing of note"))
    lines.append("errors: " + ("none" if report.ok else ""))
    lines.extend(f"  - {error}" for error in report.errors)
    seen = [f"{stats.problem_counts[p.split(':', 1)[0]]:,} x {p}" for p in stats.problems]
    if stats.internal_count:
        seen.insert(0, f"{sum(stats.internal_count.values()):,} x -32603 Internal error (above)")
    lines.append("other problems seen (not in the exit status): " + ("none" if not seen else ""))
    lines.extend(f"  - {problem}" for problem in seen)
    lines.append(f"verdict: {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=Options.messages, help="hostile messages to send (%(default)s)")
    parser.add_argument("--seed", type=int, default=Options.seed, help="the random seed (%(default)s)")
    parser.add_argument("--store", choices=("memory", "sqlite"), default=Options.store)
    parser.add_argument("--peers", type=int, default=Options.peers, help="hostile sockets (%(default)s)")
    parser.add_argument("--workers", type=int, default=Options.workers, help="the node's workers (%(default)s)")
    parser.add_argument("--queued", type=int, default=Options.queued, help="tasks queued before the flood (%(default)s)")
    parser.add_argument("--max-broker-gib", type=float, default=Options.max_broker_gib, help="the broker's address space")
    args = parser.parse_args(argv)
    options = Options(args.messages, args.seed, args.store, max(1, args.peers), args.workers, args.queued)
    options.max_broker_gib = args.max_broker_gib
    report = run(options)
    print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
