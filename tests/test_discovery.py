"""Discovery: describe() turns a task's signature into an OpenRPC method object, the broker keeps what nodes
send within bounds, and rpc.discover answers with the document, checked in-process and on a real cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest
import zmq

import zerotask
from tests.core_helpers import make_core
from tests.test_jsonrpc_spec import RawPeer
from zerotask import wire
from zerotask.broker.discovery import MAX_DESCRIPTION_BYTES, UNDESCRIBED, Discovery
from zerotask.broker.security import Security
from zerotask.describe import KIND, describe, descriptions, schema
from zerotask.exceptions import Forbidden
from zerotask.task import Dispatcher, Task
from zerotask.testing import Cluster, wait_until

# ---- describe(): unit ------------------------------------------------------------------------------


def params_of(function: Any) -> dict[str, dict[str, Any]]:
    return {param["name"]: param for param in describe(Task("t", function))["params"]}


def test_scalar_annotations_become_json_schema_types() -> None:
    def f(i: int, x: float, s: str, b: bool, n: None) -> int:
        return 0

    params = params_of(f)
    assert {name: p["schema"] for name, p in params.items()} == {
        "i": {"type": "integer"},
        "x": {"type": "number"},
        "s": {"type": "string"},
        "b": {"type": "boolean"},
        "n": {"type": "null"},
    }
    assert all(p["required"] for p in params.values())
    assert describe(Task("t", f))["result"] == {"name": "result", "schema": {"type": "integer"}}


def test_containers_become_arrays_and_objects() -> None:
    assert schema(list[int]) == {"type": "array", "items": {"type": "integer"}}
    assert schema(list) == {"type": "array"}
    assert schema(Sequence[str]) == {"type": "array", "items": {"type": "string"}}
    assert schema(tuple[int, ...]) == {"type": "array", "items": {"type": "integer"}}
    assert schema(tuple[int, str]) == {
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2,
        "maxItems": 2,
    }
    assert schema(set[int]) == {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert schema(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}
    assert schema(Mapping[str, Any]) == {"type": "object"}
    assert schema(dict) == {"type": "object"}
    assert schema(list[list[list[int]]]) == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
    }


def test_optional_and_union_become_any_of() -> None:
    nullable = {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert schema(Optional[int]) == nullable  # noqa: UP045 - the old spelling must work too
    assert schema(int | None) == nullable
    assert schema(Union[int, str]) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}  # noqa: UP007
    assert schema(Literal["a", 1]) == {"enum": ["a", 1]}


def test_any_unannotated_and_unknown_types_are_anything() -> None:
    class Custom:
        pass

    def f(a, b: Any, c: Custom, d: bytes):  # type: ignore[no-untyped-def]
        return a

    assert [p["schema"] for p in params_of(f).values()] == [{}, {}, {}, {}]
    assert describe(Task("t", f))["result"]["schema"] == {}


def test_defaults_make_params_optional_and_show_in_the_schema() -> None:
    def f(a: int, b: int = 3, c: tuple[int, int] = (1, 2), d: object = object(), e: str | None = None) -> None:
        pass

    params = params_of(f)
    assert params["a"] == {"name": "a", "required": True, "schema": {"type": "integer"}}
    assert params["b"] == {"name": "b", "required": False, "schema": {"type": "integer", "default": 3}}
    assert params["c"]["schema"]["default"] == [1, 2]
    assert params["d"] == {"name": "d", "required": False, "schema": {}}  # not JSON: no default shown
    assert params["e"]["schema"]["default"] is None and not params["e"]["required"]


def test_star_args_and_kwargs_are_described_as_array_and_object() -> None:
    def f(first: str, *rest: int, **options: float) -> None:
        pass

    params = params_of(f)
    assert params["rest"]["schema"] == {"type": "array", "items": {"type": "integer"}}
    assert params["rest"][KIND] == "var-positional" and not params["rest"]["required"]
    assert params["options"]["schema"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert params["options"][KIND] == "var-keyword" and not params["options"]["required"]
    assert "paramStructure" not in describe(Task("t", f))

    def untyped(*args, **kwargs):  # type: ignore[no-untyped-def]
        pass

    assert [p["schema"] for p in params_of(untyped).values()] == [{"type": "array"}, {"type": "object"}]


def test_positional_only_and_keyword_only_set_the_param_structure() -> None:
    def by_position(a: int, /, b: int) -> None:
        pass

    def by_name(a: int, *, b: int) -> None:
        pass

    def both(a: int, /, *, b: int) -> None:
        pass

    assert describe(Task("t", by_position))["paramStructure"] == "by-position"
    assert params_of(by_position)["a"][KIND] == "positional-only"
    assert describe(Task("t", by_name))["paramStructure"] == "by-name"
    assert params_of(by_name)["b"][KIND] == "keyword-only"
    assert "paramStructure" not in describe(Task("t", both))


def test_docstring_gives_summary_and_description() -> None:
    def documented() -> None:
        """Do the thing.

        At length, over
        two lines.
        """

    def undocumented() -> None:
        pass

    method = describe(Task("named", documented))
    assert method["name"] == "named"
    assert method["summary"] == "Do the thing."
    assert method["description"] == "At length, over\ntwo lines."
    assert "summary" not in describe(Task("t", undocumented)) and "description" not in describe(Task("t", undocumented))


def test_unresolvable_annotations_and_builtins_do_not_raise() -> None:
    def f(a: NoSuchType) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
        return a

    assert describe(Task("t", f))["params"] == [{"name": "a", "required": True, "schema": {}}]
    assert describe(Task("t", len))["name"] == "t"


def test_descriptions_leave_out_what_does_not_fit() -> None:
    dispatcher = Dispatcher()

    def small(a: int) -> int:
        """Small."""
        return a

    def huge() -> None:
        pass

    huge.__doc__ = "Huge.\n\n" + "x" * 20_000
    for name, function in (("a", small), ("b", small), ("huge", huge)):
        dispatcher.register(Task(name, function))
    described = descriptions(dispatcher, ["a", "b", "huge", "missing"])
    assert sorted(described) == ["a", "b"]  # huge is over 16 KiB; missing is not registered
    one = len(json.dumps(described["a"], separators=(",", ":")))
    assert sorted(descriptions(dispatcher, ["a", "b"], max_total_bytes=one * 3 // 2)) == ["a"]


# ---- Discovery: in-process, on the core --------------------------------------------------------------


def described(discovery: Discovery) -> dict[str, dict[str, Any]]:
    document = discovery.document()
    assert document["openrpc"] == "1.3.2"
    assert document["info"] == {"title": "zerotask", "version": zerotask.__version__}
    return {method["name"]: method for method in document["methods"]}


def test_discovery_keeps_only_checked_descriptions_of_served_names() -> None:
    core = make_core()
    discovery = Discovery(core, max_total_bytes=1024 * 1024)
    good = {"params": [{"name": "a", "schema": {}}], "summary": "ok", "bogus": 1, "x-extra": 2, "name": "lie"}
    hostile = {
        "good": good,
        "text": "not an object",
        "bad_params": {"params": {"a": 1}},
        "bad_summary": {"params": [], "summary": 5},
        "big": {"params": [], "description": "x" * (MAX_DESCRIPTION_BYTES + 1)},
        "unserved": {"params": []},
    }
    names = ["good", "text", "bad_params", "bad_summary", "big", "plain"]
    core.connect(b"n1", names, 0)
    assert discovery.connected(names, hostile) == 1
    methods = described(discovery)
    assert sorted(methods) == sorted(names)
    assert methods["good"] == {"name": "good", "params": [{"name": "a", "schema": {}}], "summary": "ok", "x-extra": 2}
    for name in ("text", "bad_params", "bad_summary", "big", "plain"):
        assert methods[name]["params"] == [] and methods[name]["description"] == UNDESCRIBED
    assert discovery.connected(names, ["not", "a", "dict"]) == 0


def test_discovery_takes_the_latest_and_forgets_names_no_node_serves() -> None:
    core = make_core()
    discovery = Discovery(core, max_total_bytes=1024 * 1024)
    core.connect(b"n1", ["a", "b"], 0)
    discovery.connected(["a", "b"], {"a": {"params": [], "summary": "first"}, "b": {"params": []}})
    core.connect(b"n2", ["a"], 0)
    discovery.connected(["a"], {"a": {"params": [], "summary": "second"}})
    assert described(discovery)["a"]["summary"] == "second"
    core.connect(b"n3", ["a"], 0)
    discovery.connected(["a"], {})  # a node that says nothing leaves the description alone
    assert described(discovery)["a"]["summary"] == "second"
    core.lose(b"n1", "test")
    discovery.forget_unserved()
    assert sorted(described(discovery)) == ["a"]
    core.lose(b"n2", "test")
    core.lose(b"n3", "test")
    discovery.forget_unserved()
    assert described(discovery) == {}
    assert discovery.connected(["a"], {}) == 0


def test_discovery_stays_within_its_total_bytes() -> None:
    core = make_core()
    discovery = Discovery(core, max_total_bytes=200)
    names = [f"t{i}" for i in range(10)]
    core.connect(b"n1", names, 0)
    kept = discovery.connected(names, {name: {"params": [], "summary": "s" * 40} for name in names})
    assert 0 < kept < 10
    assert len(described(discovery)) == 10  # the rest are listed, undescribed


# ---- rpc.discover on a real broker and node ----------------------------------------------------------


@pytest.fixture
def plain_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster without CURVE, so that a raw socket can talk to it."""
    with Cluster(store="memory", directory=tmp_path, curve=False) as made:
        made.start_broker()
        yield made


@pytest.fixture
def raw(plain_cluster: Cluster) -> Iterator[RawPeer]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield RawPeer(context, plain_cluster.endpoint, "dealer")
    context.destroy(linger=0)


def discover(peer: RawPeer) -> dict[str, Any]:
    reply = peer.call({"jsonrpc": "2.0", "method": "rpc.discover", "id": "d"})
    assert reply["id"] == "d", reply
    document: dict[str, Any] = reply["result"]
    return document


def test_rpc_discover_describes_the_tasks_a_node_serves(plain_cluster: Cluster, raw: RawPeer) -> None:
    assert discover(raw)["methods"] == []
    node = plain_cluster.start_node("tests.discovery_tasks")
    document = discover(raw)
    assert document["openrpc"] == "1.3.2" and document["info"]["version"] == zerotask.__version__
    names = [method["name"] for method in document["methods"]]
    assert names == sorted(names) and {"scale", "plain", "discovery.flag"} <= set(names)
    scale = next(method for method in document["methods"] if method["name"] == "scale")
    assert scale["summary"] == "Multiply every value by a factor."
    assert scale["description"] == 'Returns the scaled values under "values", and the label if one was given.'
    assert scale["params"] == [
        {"name": "values", "required": True, "schema": {"type": "array", "items": {"type": "number"}}},
        {"name": "factor", "required": False, "schema": {"type": "number", "default": 2.0}},
        {
            "name": "label",
            "required": False,
            "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            KIND: "keyword-only",
        },
    ]
    assert scale["result"] == {"name": "result", "schema": {"type": "object"}}
    # The descriptions disappear with the node that sent them.
    node.stop()
    wait_until(lambda: discover(raw)["methods"] == [], 20, "the node's tasks to leave rpc.discover")


def test_hostile_connect_descriptions_are_dropped_and_the_node_still_works(plain_cluster: Cluster, raw: RawPeer) -> None:
    plain_cluster.start_node("tests.discovery_tasks")
    liar = RawPeer(raw.socket.context, plain_cluster.endpoint, "dealer")  # type: ignore[arg-type]
    try:
        hostile = {
            "scale": "not an object",
            "plain": {"params": [], "description": "x" * 40_000},
            "forged": {"params": [], "summary": "for a name the node does not serve"},
        }
        params = {"node": "liar", "methods": ["scale", "plain", "evil"], "credit": 0, "descriptions": hostile}
        reply = liar.call({"jsonrpc": "2.0", "method": "zerotask.broker.connect", "params": params, "id": 1})
        assert "result" in reply, reply
        methods = {method["name"]: method for method in discover(raw)["methods"]}
        assert "forged" not in methods
        assert methods["evil"]["description"] == UNDESCRIBED
        assert methods["scale"]["summary"] == "Multiply every value by a factor."  # the real node's, kept
        assert methods["plain"]["params"][0]["name"] == "a"
        # Not even an object: ignored, the connect still succeeds.
        params["descriptions"] = [1, 2, 3]
        reply = liar.call({"jsonrpc": "2.0", "method": "zerotask.broker.connect", "params": params, "id": 2})
        assert "result" in reply, reply
        liar.send({"jsonrpc": "2.0", "method": "zerotask.broker.disconnect"})
        wait_until(lambda: "evil" not in {m["name"] for m in discover(raw)["methods"]}, 20, "the liar's names to go")
        assert plain_cluster.client().call("scale", [1.0, 2.0], 3.0) == {"values": [3.0, 6.0], "label": None}
    finally:
        liar.socket.close(linger=0)


def test_rpc_discover_is_for_every_listed_key_under_curve(tmp_path: Path) -> None:
    import zmq.auth

    for folder in ("broker", "clients"):
        (tmp_path / folder).mkdir()
    _, broker_secret = zmq.auth.create_certificates(str(tmp_path / "broker"), "broker")
    client_public, _ = zmq.auth.create_certificates(str(tmp_path / "clients"), "client")
    security = Security(curve_secret=broker_secret, clients=str(tmp_path / "clients"))
    security.sender = zmq.auth.load_certificate(client_public)[0].decode()
    security.check(wire.DISCOVER)  # a client key may
    security.sender = None
    with pytest.raises(Forbidden):
        security.check(wire.DISCOVER)  # a key no one listed may not
