"""Authentication and roles (CURVE, ZAP), tested as an attacker would: real broker and node processes, and
raw ZeroMQ sockets that send whatever they like, with no key, an unlisted key, or the wrong role's key."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from zerotask import auth, jsonrpc, sockets, wire
from zerotask.client import AsyncClient, Client
from zerotask.exceptions import Forbidden, TaskRevoked, TaskTimeout, UnknownTask
from zerotask.testing import Cluster, ManagedProcess, free_port, scaled, wait_until


@pytest.fixture
def curve_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A CURVE broker on the memory store (keys: client, client2, node, admin); no node yet."""
    with Cluster(store="memory", directory=tmp_path, curve=True) as made:
        made.start_broker()
        yield made


# ---- raw sockets, as an attacker has them ------------------------------------------------------------


def raw_dealer(endpoint: str, keys: sockets.CurveKeys | None) -> zmq.Socket[bytes]:
    return sockets.dealer(zmq.Context.instance(), endpoint, curve=keys)


def keys_of(cluster: Cluster, name: str) -> sockets.CurveKeys:
    peer = cluster.peer(name)
    keys = auth.peer_keys(peer["curve_secret"], peer["broker_key"])
    assert keys is not None
    return keys


def unlisted_keys(cluster: Cluster) -> sockets.CurveKeys:
    """A key pair of our own, in no directory the broker reads, with the broker's true public key."""
    _, secret = auth.create_keys(cluster.directory / "mallory", "mallory")
    keys = auth.peer_keys(secret, cluster.peer("client")["broker_key"])
    assert keys is not None
    return keys


def send(sock: zmq.Socket[bytes], message: dict[str, Any]) -> None:
    """Send without blocking; a socket whose handshake was refused has no connection to send on."""
    try:
        sock.send(jsonrpc.dumps(message), zmq.NOBLOCK)
    except zmq.Again:
        pass


def heard(sock: zmq.Socket[bytes], seconds: float) -> list[dict[str, Any]]:
    """Every JSON-RPC item received on ``sock`` within ``seconds`` (scaled)."""
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + scaled(seconds)
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            items.extend(jsonrpc.items(sock.recv()))
    return items


def ask(sock: zmq.Socket[bytes], method: str, params: Any, seconds: float = 5.0) -> dict[str, Any] | None:
    """Send a request; its response, or None if none came within ``seconds`` (scaled)."""
    send(sock, jsonrpc.request(method, params, "q"))
    deadline = time.monotonic() + scaled(seconds)
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            for item in jsonrpc.items(sock.recv()):
                if item.get("id") == "q":
                    return item
    return None


def connect_params(name: str) -> dict[str, Any]:
    return {"node": name, "methods": ["add"], "workers": 1, "credit": 100}


# ---- who may connect -------------------------------------------------------------------------------


def test_a_plaintext_dealer_gets_no_answer_from_a_curve_broker(curve_cluster: Cluster) -> None:
    with raw_dealer(curve_cluster.endpoint, None) as plain:
        assert ask(plain, wire.PING, {}, seconds=1.5) is None
        assert ask(plain, "add", [5, 6], seconds=0.5) is None
    broker = curve_cluster.broker
    assert broker is not None
    # Which side sees the mismatch first is a race: the broker logs one reason or the other.
    wait_until(lambda: "refused a peer on" in broker.output(), 10, "the refusal in the broker's log")
    assert "WARNING" in broker.output() and ("does not speak CURVE" in broker.output() or "hung up" in broker.output())


def test_a_curve_dealer_with_an_unlisted_key_gets_no_answer(curve_cluster: Cluster) -> None:
    keys = unlisted_keys(curve_cluster)
    with raw_dealer(curve_cluster.endpoint, keys) as mallory:
        assert ask(mallory, wire.PING, {}, seconds=1.5) is None
        assert ask(mallory, wire.SUBMIT, {"method": "add", "args": [1, 2]}, seconds=0.5) is None
    broker = curve_cluster.broker
    assert broker is not None
    wait_until(lambda: keys.public.decode() in broker.output(), 10, "the refused key in the broker's log")
    assert "is in none of --clients, --nodes, --admins" in broker.output()


def test_a_client_without_keys_times_out_with_a_hint_about_keys(curve_cluster: Cluster) -> None:
    with Client(curve_cluster.endpoint, timeout=1.0) as client, pytest.raises(TaskTimeout, match="curve_secret and broker_key"):
        client.info()
    with AsyncClient(curve_cluster.endpoint, timeout=1.0) as aclient, pytest.raises(TaskTimeout, match="curve_secret"):
        aclient.info()


def test_a_listed_client_key_calls_add_through_a_node_with_a_node_key(curve_cluster: Cluster) -> None:
    curve_cluster.start_node("tests.tasks")
    with raw_dealer(curve_cluster.endpoint, keys_of(curve_cluster, "client")) as sock:
        assert ask(sock, "add", [5, 6], seconds=20) == {"jsonrpc": "2.0", "result": 11, "id": "q"}
    assert curve_cluster.client().add(5, 6) == 11
    handle = AsyncClient(curve_cluster.endpoint, **curve_cluster.peer("client"))
    try:
        assert handle.add(2, 3).result(scaled(20)) == 5
    finally:
        handle.close()
    assert curve_cluster.client(key="node").add(1, 1) == 2  # a node key may call tasks too (subtasks)


# ---- roles -----------------------------------------------------------------------------------------


def test_a_client_key_cannot_register_as_a_node_and_is_never_sent_a_task(curve_cluster: Cluster) -> None:
    client = curve_cluster.client()
    task_ids = [client.submit("add", n, n) for n in range(3)]  # queued: no node yet
    with raw_dealer(curve_cluster.endpoint, keys_of(curve_cluster, "client")) as impostor:
        refused = ask(impostor, wire.CONNECT, connect_params("impostor"))
        assert refused is not None and refused["error"]["code"] == wire.FORBIDDEN == -32006
        assert refused["error"]["data"] == {"method": wire.CONNECT}
        for method, params in [
            (wire.REQUEST, {"credit": 100}),
            (wire.FINISHED_TASKS, {"tasks": [{"task_id": task_ids[0], "result": 0}]}),
        ]:
            send(impostor, jsonrpc.notification(method, params))
            answer = ask(impostor, method, params)
            assert answer is not None and answer["error"]["code"] == wire.FORBIDDEN
        assert not [item for item in heard(impostor, 1.5) if item.get("method") == wire.NODE_RUN]
    assert curve_cluster.info()["nodes"] == []
    assert [client.status(task_id) for task_id in task_ids] == ["QUEUED"] * 3  # the forged outcome was refused
    # A node key gets the tasks, without their owner.
    with raw_dealer(curve_cluster.endpoint, keys_of(curve_cluster, "node")) as node:
        send(node, jsonrpc.request(wire.CONNECT, connect_params("raw-node"), "connect"))
        runs = [item for item in heard(node, 2.0) if item.get("method") == wire.NODE_RUN]
    tasks = [task for run in runs for task in run["params"]["tasks"]]
    assert sorted(task["task_id"] for task in tasks) == sorted(task_ids)
    assert all("owner" not in task for task in tasks)


def test_client_b_cannot_see_revoke_or_reuse_client_a_task_and_an_admin_can(curve_cluster: Cluster) -> None:
    a, b, admin = curve_cluster.client(), curve_cluster.client(key="client2"), curve_cluster.client(key="admin")
    task_id = a.submit("add", 1, 2)  # queued: no node
    # To B the task does not exist: the same answer as for an id never used.
    with pytest.raises(UnknownTask, match=task_id):
        b.status(task_id)
    with pytest.raises(UnknownTask):
        b.result(task_id, timeout=1)
    with pytest.raises(UnknownTask):
        b.revoke(task_id)
    assert b.rpc(wire.NOTIFY, {"task_ids": [task_id]}, 5) == {"unknown": [task_id]}
    for method in (wire.SUBMIT, wire.CALL):  # nor can B submit under its id, to wait for its outcome
        with pytest.raises(Forbidden):
            b.rpc(method, {"method": "add", "args": [1, 2], "task_id": task_id}, 5)
    assert a.status(task_id) == "QUEUED"
    assert admin.status(task_id) == "QUEUED"
    assert admin.revoke(task_id) == "REVOKED"
    with pytest.raises(TaskRevoked):
        a.result(task_id, timeout=5)


def test_ownership_survives_a_broker_restart(tmp_path: Path) -> None:
    with Cluster(store="tasks.db", directory=tmp_path, curve=True) as cluster:
        cluster.start_broker()
        task_id = cluster.client().submit("add", 1, 2)
        assert cluster.broker is not None
        cluster.broker.stop()
        cluster.start_broker()
        with pytest.raises(UnknownTask):
            cluster.client(key="client2").status(task_id)
        assert cluster.client().status(task_id) == "QUEUED"
        assert cluster.client(key="admin").status(task_id) == "QUEUED"


def test_events_over_curve_reach_a_listed_client_and_not_a_plaintext_sub(curve_cluster: Cluster) -> None:
    seen: list[dict[str, Any]] = []
    watcher = Client(curve_cluster.endpoint, timeout=scaled(10), **curve_cluster.peer("client"))
    thread = threading.Thread(target=lambda: seen.extend(watcher.events(idle_timeout=scaled(3))), daemon=True)
    thread.start()
    with sockets.subscriber(zmq.Context.instance(), curve_cluster.publish) as plain:
        time.sleep(scaled(1.0))  # both subscribed (or, for the plaintext one, refused)
        task_id = curve_cluster.client().submit("add", 1, 2)
        assert not plain.poll(int(scaled(1.5) * 1000))
    thread.join(scaled(10))
    watcher.close()
    assert {"event": "queued", "task_id": task_id, "method": "add"} in seen


# ---- safe defaults ---------------------------------------------------------------------------------


def test_the_broker_refuses_a_public_bind_without_keys_and_starts_with_insecure(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "zerotask.broker", "--bind", f"tcp://0.0.0.0:{port}", "--store", "memory"]
    command += ["--publish", f"tcp://127.0.0.1:{free_port()}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2
    assert f"refusing to bind tcp://0.0.0.0:{port} without CURVE" in done.stderr and "--insecure" in done.stderr
    broker = ManagedProcess([*command, "--insecure"], tmp_path / "broker.log")
    try:
        wait_until(lambda: "broker on" in broker.output() or not broker.alive(), 20, "the broker to start")
        assert broker.alive(), broker.output()
        assert "WARNING --insecure" in broker.output().replace("zerotask.broker ", "")
        with Client(f"tcp://127.0.0.1:{port}", timeout=scaled(10)) as client:
            assert client.rpc(wire.PING, {}, scaled(10))["instance"]
    finally:
        broker.stop()


def test_loopback_ipc_and_inproc_are_local_and_everything_else_is_not() -> None:
    local = [
        "tcp://127.0.0.1:5555",
        "tcp://127.1.2.3:1",
        "tcp://localhost:5555",
        "tcp://[::1]:5555",
        "ipc:///tmp/x",
        "inproc://x",
    ]
    remote = ["tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://10.0.0.1:5555", "tcp://eth0:5555", "tcp://[::]:5555"]
    assert all(sockets.is_local(endpoint) for endpoint in local)
    assert not any(sockets.is_local(endpoint) for endpoint in remote)


# ---- keys ------------------------------------------------------------------------------------------


def test_zerotask_keys_writes_both_files_with_the_secret_private(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "zerotask.cli", "keys", "alice", "--dir", str(tmp_path / "keys")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 0, done.stderr
    public, secret = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert zmq.auth.load_certificate(public)[1] is None  # the public file holds no secret
    assert zmq.auth.load_certificate(secret) == (zmq.auth.load_certificate(public)[0], auth.load_secret(secret)[1])
    again = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites a key


def test_env_vars_are_honoured_by_the_node_and_the_clients(curve_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = curve_cluster.peer("node")
    env = dict(os.environ, ZEROTASK_CURVE_SECRET=peer["curve_secret"], ZEROTASK_BROKER_KEY=peer["broker_key"])
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "zerotask.node", "tests.tasks", "--broker", curve_cluster.endpoint, "--workers", "1"]
    node = ManagedProcess(command, curve_cluster.directory / "env-node.log", env=env)  # no key flags
    curve_cluster.nodes.append(node)
    curve_cluster.wait_for_nodes(1, node)
    client_keys = curve_cluster.peer("client")
    monkeypatch.setenv(auth.ENV_CURVE_SECRET, client_keys["curve_secret"])
    monkeypatch.setenv(auth.ENV_BROKER_KEY, client_keys["broker_key"])
    with Client(curve_cluster.endpoint, timeout=scaled(20)) as client:
        assert client.add(5, 6) == 11
    with AsyncClient(curve_cluster.endpoint) as aclient:
        assert aclient.add(2, 2).result(scaled(20)) == 4
    monkeypatch.delenv(auth.ENV_BROKER_KEY)
    with pytest.raises(ValueError, match="broker_key"):
        Client(curve_cluster.endpoint)


def test_refusals_are_rate_limited_and_say_how_many_were_left_out(caplog: pytest.LogCaptureFixture) -> None:
    refusals = auth.RateLimitedLog(logging.getLogger("zerotask.test"), burst=3, period_s=scaled(0.5))
    with caplog.at_level(logging.WARNING, "zerotask.test"):
        for n in range(10):
            refusals.warning("refused peer %d", n)
        time.sleep(scaled(0.6))
        refusals.warning("refused peer %d", 10)
    assert [record.getMessage() for record in caplog.records] == [
        "refused peer 0",
        "refused peer 1",
        "refused peer 2",
        "refused peer 10 (7 more refusal(s) not logged)",
    ]
