"""The simulated hosts of tests/netns.py: they talk over TCP, a cut-off host falls silent without a reset,
and everything a network made is gone after it closes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.netns import PREFIX, Host, Network, network_or_skip, remove_stale_networks
from zerotask.testing import scaled, wait_until


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with network_or_skip(tmp_path) as made:
        yield made


def _connected_pair(client_host: Host, server_host: Host) -> tuple[socket.socket, socket.socket, socket.socket]:
    """A TCP connection from ``client_host`` to ``server_host``: (listener, client end, server end)."""
    listener = server_host.socket()
    listener.bind((server_host.address, 0))
    listener.listen()
    outgoing = client_host.socket()
    outgoing.settimeout(scaled(5))
    outgoing.connect(listener.getsockname())
    listener.settimeout(scaled(5))
    incoming, _ = listener.accept()
    return listener, outgoing, incoming


def _receive(sock: socket.socket, size: int, timeout_s: float) -> bytes:
    sock.settimeout(scaled(timeout_s))
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_hosts_talk_over_tcp_at_their_addresses(network: Network) -> None:
    a, b = network.host("a"), network.host("b")
    assert (a.address, b.address) == ("10.231.0.1", "10.231.0.2")
    listener, outgoing, incoming = _connected_pair(a, b)
    with listener, outgoing, incoming:
        assert incoming.getpeername()[0] == a.address
        outgoing.sendall(b"ping")
        assert _receive(incoming, 4, 5) == b"ping"
        incoming.sendall(b"pong")
        assert _receive(outgoing, 4, 5) == b"pong"


def test_a_cut_off_host_falls_silent_without_a_reset_and_comes_back(network: Network) -> None:
    a, b = network.host("a"), network.host("b")
    listener, outgoing, incoming = _connected_pair(a, b)
    with listener, outgoing, incoming:
        b.cut_off()
        assert b.is_cut_off and not a.is_cut_off
        outgoing.sendall(b"sent during the cut")  # no error: nothing tells a that b is gone
        with pytest.raises(TimeoutError):
            _receive(incoming, 1, 1)
        with pytest.raises(TimeoutError):  # no reset arrives either: a just hears nothing
            _receive(outgoing, 1, 1)
        with a.socket() as fresh, pytest.raises(TimeoutError):  # a new connection is not refused: it times out
            fresh.settimeout(1)
            fresh.connect(listener.getsockname())
        b.restore()
        assert not b.is_cut_off
        assert _receive(incoming, 19, 15) == b"sent during the cut"  # TCP sent it again, the connection lived on
        incoming.sendall(b"back")
        assert _receive(outgoing, 4, 5) == b"back"


def test_a_cut_off_host_still_reaches_itself(network: Network) -> None:
    a = network.host("a")
    network.host("b")
    a.cut_off()
    listener, outgoing, incoming = _connected_pair(a, a)  # its own address, through its loopback
    with listener, outgoing, incoming:
        outgoing.sendall(b"local")
        assert _receive(incoming, 5, 5) == b"local"


def _namespace_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_processes_run_in_their_host_and_none_outlives_the_network(tmp_path: Path) -> None:
    network = network_or_skip(tmp_path)
    grandchild_file = tmp_path / "grandchild.pid"
    try:
        a = network.host("a")
        # A grandchild in the background too: the network must find it by its namespace, not its parent.
        process = a.start(["sh", "-c", f"sleep 300 & echo $! > {grandchild_file}; exec sleep 300"], "sleeper")
        inside = os.stat(f"/run/netns/{a.namespace}").st_ino
        wait_until(lambda: _namespace_of(process.pid) == inside, 5, "ip to enter the namespace")  # then it execs the command
        wait_until(lambda: "sleep" in Path(f"/proc/{process.pid}/cmdline").read_text(), 5, "ip to exec the command")
        devices = a.run(["cat", "/proc/net/dev"]).stdout
        assert "eth0" in devices and "port-a" not in devices
        wait_until(grandchild_file.exists, 5, "the grandchild to start")
        namespaces = [a.namespace, network.switch]
    finally:
        network.close()
    assert not process.alive()
    grandchild = Path(f"/proc/{int(grandchild_file.read_text())}")
    wait_until(lambda: not grandchild.exists() or "zombie" in (grandchild / "status").read_text(), 5, "the grandchild to die")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(namespace in listed for namespace in namespaces)


def _links_here() -> set[str]:
    listed = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().partition("@")[0] for line in listed.splitlines()}


def test_nothing_is_made_in_the_machines_own_namespace(tmp_path: Path) -> None:
    before = _links_here()
    with network_or_skip(tmp_path) as network:
        network.host("a")
        network.host("b")
        made_here = _links_here() - before  # other programs may add links meanwhile: look for ours
    assert not {name for name in made_here if name.startswith(("port-", "bridge0", "eth0"))}


def test_the_networks_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    with network_or_skip(tmp_path):  # skips where namespaces cannot be made
        pass
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = f"{PREFIX}-{finished.pid}-dead00-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        deadline = time.monotonic() + scaled(5)
        while time.monotonic() < deadline and os.path.exists(f"/proc/{finished.pid}"):
            time.sleep(0.05)  # the pid was reused at once: unlikely, but then it is not stale
        assert remove_stale_networks() in ([stale], [])  # [] if a test running in parallel removed it first
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert stale not in listed
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


@pytest.mark.parametrize(
    ("patch", "reason"),
    [(("os.geteuid", lambda: 1000), "need root"), (("shutil.which", lambda name: None), "not installed")],
    ids=["not-root", "no-ip"],
)
def test_tests_skip_saying_why_where_namespaces_cannot_be_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, patch: tuple[str, object], reason: str
) -> None:
    monkeypatch.setattr(*patch)
    netns.unavailable.cache_clear()
    try:
        with pytest.raises(pytest.skip.Exception, match=f"simulated hosts need network namespaces: .*{reason}"):
            network_or_skip(tmp_path)
    finally:
        monkeypatch.undo()
        netns.unavailable.cache_clear()
