"""Simulated hosts for tests: Linux network namespaces joined by veth links to a bridge.

``Network(directory)`` makes a switch: a namespace of its own holding a bridge. ``network.host("a")``
makes a host: a namespace with a loopback and ``eth0``, one end of a veth pair whose other end is plugged
into the bridge, and the next address of ``10.231.0.0/24``. ``host.start(args, "broker")`` runs a process
inside the host (a :class:`~zerotask.testing.ManagedProcess`); ``host.socket()`` gives the test itself a
socket there. ``host.cut_off()`` pulls the host's cable (the switch's end of its veth goes down: packets
vanish, no TCP reset or ICMP error reaches anyone) and ``host.restore()`` plugs it back.

``network.close()`` (or leaving ``with Network(...)``) stops every process started in the network, kills
whatever else still runs in its namespaces, and deletes them with their links, whatever the test did.

Nothing is made in the machine's own namespace: links are created inside the namespaces and the addresses
exist only there, so traffic stays inside them and parallel networks may use the same addresses.
Namespaces are named ``ztnet-PID-RANDOM-HOST``; the networks of a process that died before its teardown
(SIGKILL) are removed by the next ``Network`` made on the machine.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from zerotask.testing import ManagedProcess, scaled

PREFIX = "ztnet"
SUBNET = "10.231.0"  # a /24 that exists only inside the namespaces of one Network
_CLONE_NEWNET = 0x40000000
_HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,9}")
ROOT = Path(__file__).resolve().parent.parent


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=scaled(30))
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be made on this machine, or None if they can (checked once)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (these tests run as root, e.g. in CI's container)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "exec", probe, "true")
        _ip("-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        _ip("-n", probe, "link", "add", "probe2", "type", "bridge")
    except (RuntimeError, OSError, subprocess.SubprocessError) as problem:
        return f"cannot make a network namespace with a veth link and a bridge here: {problem}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _pids_in(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(pid) for pid in done.stdout.split()]


def _kill_everything_in(namespaces: list[str]) -> None:
    """SIGKILL every process left in these namespaces (all were started in them, by their network) and wait
    until none is left: a namespace with a process in it outlives its deletion."""
    deadline = time.monotonic() + scaled(20)
    while pids := [pid for namespace in namespaces for pid in _pids_in(namespace)]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} would not die in namespaces {namespaces}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_networks() -> list[str]:
    """Delete the namespaces of networks whose process no longer runs; returns their names."""
    owners = {name: re.fullmatch(rf"{PREFIX}-(\d+)-[\w-]+", name) for name in _namespaces()}
    stale = [name for name, owner in owners.items() if owner is not None and not _alive(int(owner[1]))]
    _kill_everything_in(stale)
    for name in stale:
        _ip("netns", "del", name, check=False)
    return stale


def _libc_setns() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.setns


class Host:
    """A simulated machine: a network namespace with one address on its network."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.namespace = f"{network.name}-{name}"
        self.address = address
        self.switch_port = f"port-{name}"  # the switch's end of this host's veth, in the switch namespace
        self.processes: list[ManagedProcess] = []

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``args`` inside this host, from the project's root with the project on PYTHONPATH, its
        output in ``DIRECTORY/NN-HOST-NAME.log``. It is stopped by :meth:`Network.close` at the latest."""
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        environment = dict(os.environ, PYTHONPATH=path, **(env or {}))
        process = ManagedProcess(
            ["ip", "netns", "exec", self.namespace, *args],  # ip execs the command: the pid is the command's
            self.network.log_path(f"{self.name}-{name}"),
            cwd=ROOT,
            env=environment,
        )
        self.processes.append(process)
        return process

    def run(self, args: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside this host and return what it did (output captured, not checked)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *args], capture_output=True, text=True, timeout=scaled(timeout_s), cwd=ROOT
        )

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new IPv4 socket of this host's, for the test's own process: made in a thread that entered the
        namespace (a network namespace is per thread; a socket stays in the one it was made in)."""
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                with open(f"/run/netns/{self.namespace}") as handle:
                    if _libc_setns()(handle.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.namespace} failed")
                made.append(socket.socket(socket.AF_INET, kind))
            except BaseException as problem:  # handed to the caller's thread
                made.append(problem)

        thread = threading.Thread(target=make, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def cut_off(self) -> None:
        """Pull this host's cable: nothing it sends arrives, nothing reaches it, and nobody is told
        (no TCP reset, no ICMP). Its own processes still reach each other through its loopback address
        and its own address."""
        _ip("-n", self.network.switch, "link", "set", self.switch_port, "down")

    def restore(self) -> None:
        """Plug the cable back in: connections that survived the cut carry on."""
        _ip("-n", self.network.switch, "link", "set", self.switch_port, "up")

    @property
    def is_cut_off(self) -> bool:
        done = _ip("-n", self.network.switch, "-o", "link", "show", self.switch_port)
        return "state DOWN" in done.stdout

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.address}:{port}"

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address}, namespace {self.namespace!r})"


_open_networks: weakref.WeakSet[Network] = weakref.WeakSet()


class Network:
    """Hosts on one Ethernet segment: a bridge in a namespace of its own, a host per namespace. A context
    manager; :meth:`close` removes everything it made. Raises :class:`NetnsUnavailable` where namespaces
    cannot be made (see :func:`unavailable`)."""

    def __init__(self, directory: Path, subnet: str = SUBNET) -> None:
        reason = unavailable()
        if reason is not None:
            raise NetnsUnavailable(reason)
        remove_stale_networks()
        self.directory = directory
        self.subnet = subnet
        self.name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.switch = f"{self.name}-switch"
        self.hosts: dict[str, Host] = {}
        self._logs = 0
        self._namespaces: list[str] = []
        _open_networks.add(self)
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "bridge0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "bridge0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def host(self, name: str) -> Host:
        """Add a host called ``name`` (a lowercase letter, then up to 9 letters or digits), with the next
        free address of the subnet (.1, .2...), its link up."""
        if not _HOST_NAME.fullmatch(name) or name in self.hosts or name == "switch":
            raise ValueError(f"host name {name!r} is taken or not [a-z][a-z0-9]{{0,9}}")
        host = Host(self, name, f"{self.subnet}.{len(self.hosts) + 1}")
        self._add_namespace(host.namespace)
        # Both ends are made in their own namespaces: the link never exists in the machine's namespace.
        peer = ["peer", "name", host.switch_port, "netns", self.switch]
        _ip("link", "add", "eth0", "netns", host.namespace, "type", "veth", *peer)
        _ip("-n", self.switch, "link", "set", host.switch_port, "master", "bridge0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def log_path(self, name: str) -> Path:
        self._logs += 1
        return self.directory / f"{self._logs:02d}-{name}.log"

    def processes(self) -> list[ManagedProcess]:
        return [process for host in self.hosts.values() for process in host.processes]

    def close(self) -> None:
        """Stop every process started here (SIGTERM to all, SIGKILL to those still running after 5 s), kill
        anything else left in the namespaces, delete them and their links. Safe to call more than once."""
        processes = self.processes()
        for process in processes:
            process.signal(signal.SIGTERM)  # all at once: they stop in parallel
        for process in processes:
            process.stop(timeout_s=5)
        for host in self.hosts.values():
            host.processes.clear()
        _kill_everything_in(self._namespaces)
        for namespace in reversed(self._namespaces):  # hosts first (their veths go with them), the switch last
            _ip("netns", "del", namespace, check=False)
        left = set(self._namespaces) & set(_namespaces())
        self._namespaces.clear()
        _open_networks.discard(self)
        if left:
            raise RuntimeError(f"namespaces left behind: {sorted(left)}")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _close_open_networks() -> None:
    """A network whose test never reached its teardown (an interrupted run) is removed on exit."""
    for network in list(_open_networks):
        network.close()


def network_or_skip(directory: Path) -> Network:
    """A new :class:`Network`, or a pytest skip that says why namespaces cannot be made here."""
    try:
        return Network(directory)
    except NetnsUnavailable as reason:
        pytest.skip(f"simulated hosts need network namespaces: {reason}")
