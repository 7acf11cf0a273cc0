"""``rpc.discover``: the OpenRPC document of the tasks the connected nodes serve (docs/protocol.md, 5.14).

Nodes describe their tasks when they connect (the ``descriptions`` param of zerotask.broker.connect).
What a node says is checked and bounded before it is kept: only names that node serves, only objects with
the method object's keys, each at most MAX_DESCRIPTION_BYTES encoded, at most MAX_NAMES names and
``max_total_bytes`` in all; anything else is dropped without a word, and the task is listed undescribed.
Which names are served is the core's fact: a description outlives no node serving its name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from zerotask import __version__, jsonrpc
from zerotask.broker.core import BrokerCore
from zerotask.broker.replies import Envelope, Respond

log = logging.getLogger("zerotask.broker")

OPENRPC_VERSION = "1.3.2"
MAX_DESCRIPTION_BYTES = 16 * 1024
MAX_NAMES = 10_000
# The top-level keys of an OpenRPC method object; "x-" keys are extensions. Others are dropped.
METHOD_KEYS = frozenset(
    {"name", "summary", "description", "params", "result", "paramStructure", "deprecated", "tags", "errors", "examples"}
)
UNDESCRIBED = "served, but no node serving it described it: its params are unknown"


class Discovery:
    """The latest description of each served task name, and the OpenRPC document made of them."""

    def __init__(self, core: BrokerCore, max_total_bytes: int) -> None:
        self._core = core
        self.max_total_bytes = max_total_bytes
        self._described: dict[str, tuple[dict[str, Any], int]] = {}  # name: (method object, encoded size)
        self._total_bytes = 0

    def connected(self, names: Iterable[str], descriptions: Any) -> int:
        """A node that serves ``names`` connected with ``descriptions`` (anything a peer sent): keep those
        that pass the checks, each replacing the one kept for its name. Returns how many were kept."""
        if not isinstance(descriptions, dict):
            return 0
        kept = 0
        for name in names:
            method = _checked(name, descriptions.get(name))
            if method is None:
                continue
            size = len(json.dumps(method, separators=(",", ":")).encode())
            _, old_size = self._described.get(name, (None, 0))
            grows = name not in self._described
            if size > MAX_DESCRIPTION_BYTES or (grows and len(self._described) >= MAX_NAMES):
                continue
            if self._total_bytes - old_size + size > self.max_total_bytes:
                continue
            self._described[name] = (method, size)
            self._total_bytes += size - old_size
            kept += 1
        return kept

    def forget_unserved(self) -> None:
        """Drop the descriptions of names no connected node serves (call after a node is lost)."""
        served = self._served()
        for name in [name for name in self._described if name not in served]:
            _, size = self._described.pop(name)
            self._total_bytes -= size

    def document(self) -> dict[str, Any]:
        """The OpenRPC document: one method object per served name, sorted by name."""
        methods = []
        for name in sorted(self._served()):
            found = self._described.get(name)
            if found is not None:
                methods.append(found[0])
            else:
                methods.append(
                    {"name": name, "params": [], "result": {"name": "result", "schema": {}}, "description": UNDESCRIBED}
                )
        return {"openrpc": OPENRPC_VERSION, "info": {"title": "zerotask", "version": __version__}, "methods": methods}

    def discover(self, request: jsonrpc.Request, envelope: Envelope, respond: Respond | None) -> Any:
        """rpc.discover: no params."""
        return self.document()

    def _served(self) -> set[str]:
        return {name for node in self._core.nodes for name in node.methods}


def _checked(name: str, method: Any) -> dict[str, Any] | None:
    """The method object ``method`` with only the keys it may have and ``name`` as its name; None if it
    is not one (not an object, params not an array of objects, result not an object, a text not a string)."""
    if not isinstance(method, dict):
        return None
    params, result = method.get("params"), method.get("result", {})
    if not isinstance(params, list) or not all(isinstance(param, dict) for param in params) or not isinstance(result, dict):
        return None
    if any(key in method and not isinstance(method[key], str) for key in ("summary", "description", "paramStructure")):
        return None
    kept = {key: value for key, value in method.items() if key in METHOD_KEYS or (isinstance(key, str) and key.startswith("x-"))}
    kept["name"] = name
    return kept
