"""The ``zerotask`` command: ``zerotask broker``, ``node`` and ``keys`` here; the client commands are in
zerotask.cli_clients, the operator commands in zerotask.cli_admin.

``python -m zerotask.broker``, ``python -m zerotask.node`` and ``python -m zerotask.client`` use the same
parsers and functions. Defaults come from the constructors' modules, so they are written once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from zerotask import auth, cli_admin, cli_clients, loop
from zerotask.broker import transport
from zerotask.broker.client_protocol import DEFAULT_MAX_WAITING
from zerotask.broker.core import DEFAULT_MAX_QUEUED
from zerotask.client.calls import DEFAULT_ENDPOINT
from zerotask.node import node as node_module
from zerotask.task import POOLS

LOG_LEVELS = cli_clients.LOG_LEVELS
_configure_logging = cli_clients.configure_logging


def import_task_modules(modules: list[str]) -> None:
    """Import each module (a dotted name, or a path to a .py file) so that its @task functions register."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `zerotask node tasks` finds ./tasks.py, as with celery -A
    for module in modules:
        if module.endswith(".py"):
            directory, filename = os.path.split(os.path.abspath(module))
            sys.path.insert(0, directory)
            module = filename[:-3]
        importlib.import_module(module)


# ---- broker ----------------------------------------------------------------------------------------


def _broker_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("modules", nargs="*", metavar="MODULE", help="modules to import first, e.g. with @task(name='broker.x') methods")
    add("--bind", default=transport.DEFAULT_BIND, metavar="ENDPOINT", help="request socket for clients and nodes (%(default)s)")
    add("--publish", default=transport.DEFAULT_PUBLISH, metavar="ENDPOINT", help="event socket (%(default)s)")
    add(
        "--store",
        default=transport.DEFAULT_STORE,
        metavar="memory|PATH|URL",
        help="'memory', an SQLite file, or Redis shared with other brokers: redis://HOST:PORT/DB, rediss://... (TLS), "
        "redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB, redis+cluster://HOST:PORT,HOST:PORT (a Redis URL may end in "
        "?store=NAME: brokers of one name share tasks) (%(default)s)",
    )
    add("--heartbeat", type=float, default=transport.DEFAULT_HEARTBEAT_S, metavar="SECONDS", help="with nodes (%(default)s)")
    add(
        "--liveness",
        type=int,
        default=transport.DEFAULT_LIVENESS,
        metavar="N",
        help="missed heartbeats before a node is lost (%(default)s)",
    )
    add(
        "--max-message-bytes",
        type=int,
        default=transport.DEFAULT_MAX_MESSAGE_BYTES,
        metavar="BYTES",
        help="larger messages disconnect their sender (%(default)s)",
    )
    add(
        "--result-ttl",
        type=float,
        default=transport.DEFAULT_RESULT_TTL_S,
        metavar="SECONDS",
        help="forget outcomes older than this (%(default)s; 0: never)",
    )
    add("--max-queued", type=int, default=DEFAULT_MAX_QUEUED, metavar="N", help="tasks queued at most (%(default)s)")
    add(
        "--max-waiting",
        type=int,
        default=DEFAULT_MAX_WAITING,
        metavar="N",
        help="answers one client may be owed at once (%(default)s)",
    )
    security = parser.add_argument_group("security (CURVE; see `zerotask keys`)")
    security.add_argument("--curve-secret", metavar="FILE", help="the broker's secret certificate: turns CURVE on")
    security.add_argument("--clients", metavar="DIR", help="public certificates of the client keys admitted")
    security.add_argument("--nodes", metavar="DIR", help="public certificates of the node keys admitted")
    security.add_argument("--admins", metavar="DIR", help="public certificates of the admin keys (any task) admitted")
    security.add_argument(
        "--insecure", action="store_true", help="bind beyond this machine without CURVE: anyone who can reach it may run tasks"
    )
    add("--metrics", default=None, metavar="HOST:PORT", help="serve Prometheus /metrics there, e.g. 127.0.0.1:9808")
    add("--log-level", default="INFO", choices=LOG_LEVELS)


def _run_broker(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _configure_logging(options.log_level)
    import_task_modules(options.modules)
    try:
        broker = transport.Broker(
            bind=options.bind,
            publish=options.publish,
            store=options.store,
            heartbeat_s=options.heartbeat,
            liveness=options.liveness,
            max_message_bytes=options.max_message_bytes,
            result_ttl_s=options.result_ttl or None,
            max_queued=options.max_queued,
            max_waiting=options.max_waiting,
            curve_secret=options.curve_secret,
            clients=options.clients,
            nodes=options.nodes,
            admins=options.admins,
            insecure=options.insecure,
            metrics=options.metrics,
        )
    except ValueError as problem:
        parser.error(str(problem))
    loop.own_process()
    broker.start()
    return 0


# ---- node ------------------------------------------------------------------------------------------


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("modules", nargs="*", metavar="MODULE", help="task modules to import (default: the demo tasks add and subtract)")
    add("--broker", default=node_module.DEFAULT_BROKER, metavar="ENDPOINT", help=cli_clients.BROKER_HELP)
    add("--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="worker processes (default: the CPU count)")
    add(
        "--pool",
        choices=POOLS,
        default="process",
        help="process: --workers processes (isolation, hard time limits); thread: --workers threads (I/O, lowest latency)",
    )
    add("--concurrency", type=int, default=1, metavar="N", help="async tasks each worker runs at once (%(default)s)")
    add("--name", default=None, help="the name the broker shows for this node (default host-pid)")
    add(
        "--heartbeat",
        type=float,
        default=node_module.DEFAULT_HEARTBEAT_S,
        metavar="SECONDS",
        help="with the broker (%(default)s)",
    )
    add(
        "--liveness",
        type=int,
        default=node_module.DEFAULT_LIVENESS,
        metavar="N",
        help="missed heartbeats before reconnecting (%(default)s)",
    )
    add(
        "--prefetch", type=int, default=None, metavar="N", help="tasks held beyond one per worker (default: adapt to task length)"
    )
    add(
        "--grace",
        type=float,
        default=node_module.DEFAULT_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM, how long tasks may finish (%(default)s)",
    )
    add("--time-limit", type=float, default=None, metavar="SECONDS", help="kill tasks that run longer (tasks may set their own)")
    add("--queues", default=None, metavar="NAME,NAME", help="take tasks from these queues only (default: the queue 'default')")
    add("--max-tasks-per-worker", type=int, default=None, metavar="N", help="replace a worker process after N tasks")
    add("--max-memory-per-worker", type=float, default=None, metavar="MB", help="replace a worker process above this RSS")
    cli_clients.curve_arguments(parser)
    add("--metrics", default=None, metavar="HOST:PORT", help="serve Prometheus /metrics there, e.g. 127.0.0.1:9809")
    add("--insecure", action="store_true", help="serve --metrics beyond this machine (it has no login)")
    add("--log-level", default="INFO", choices=LOG_LEVELS)


def _run_node(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _configure_logging(options.log_level)
    if options.workers < 1 or options.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")
    import_task_modules(options.modules or ["zerotask.demo"])
    try:
        node = node_module.Node(
            broker=options.broker,
            workers=options.workers,
            name=options.name,
            heartbeat_s=options.heartbeat,
            liveness=options.liveness,
            prefetch=options.prefetch,
            grace_s=options.grace,
            time_limit_s=options.time_limit,
            queues=options.queues.split(",") if options.queues else None,
            max_tasks_per_worker=options.max_tasks_per_worker,
            max_memory_per_worker_mb=options.max_memory_per_worker,
            curve_secret=options.curve_secret,
            broker_key=options.broker_key,
            metrics=options.metrics,
            insecure=options.insecure,
            pool=options.pool,
            concurrency=options.concurrency,
        )
    except ValueError as problem:
        parser.error(str(problem))
    loop.own_process()
    node.start()
    return 0


# ---- keys ------------------------------------------------------------------------------------------


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the certificate's name: writes NAME.key (public) and NAME.key_secret (private)")
    parser.add_argument("--dir", default=".", metavar="DIR", help="where to write them (%(default)s)")


def _run_keys(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        public, secret = auth.create_keys(options.dir, options.name)
    except (ValueError, FileExistsError) as problem:
        parser.error(str(problem))
    print(f"{public}: the public key; for a client, node or admin, copy it into the broker's --clients, --nodes or")
    print("    --admins directory; for a broker, give it to its nodes and clients (--broker-key)")
    print(f"{secret}: the secret key (mode 0600); keep it private: it is this process's --curve-secret")
    return 0


# ---- entry points ----------------------------------------------------------------------------------

Arguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
COMMANDS: dict[str, tuple[str, Arguments, Run]] = {
    "broker": (
        "run a broker: queues tasks, hands them to nodes, returns results",
        _broker_arguments,
        _run_broker,
    ),
    "node": (
        "run a node: worker processes (or threads) that run the tasks of the given modules",
        _node_arguments,
        _run_node,
    ),
    "call": (
        "call a task and print its result as JSON",
        cli_clients.call_arguments,
        cli_clients.run_call,
    ),
    "map": (
        "call a task once per input; results in input order, one JSON line each",
        cli_clients.map_arguments,
        cli_clients.run_map,
    ),
    "events": (
        "print the broker's task events as they happen, one JSON line each",
        cli_clients.events_arguments,
        cli_clients.run_events,
    ),
    "dashboard": (
        "serve a live web page of the broker's nodes, queues and tasks",
        cli_clients.dashboard_arguments,
        cli_clients.run_dashboard,
    ),
    "inspect": (
        "show nodes, queues, task states, throughput",
        cli_clients.with_curve(cli_admin.inspect_arguments),
        cli_admin.run_inspect,
    ),
    "failed": (
        "list the newest failed tasks with their errors",
        cli_clients.with_curve(cli_admin.failed_arguments),
        cli_admin.run_failed,
    ),
    "retry": (
        "queue a failed or revoked task again",
        cli_clients.with_curve(cli_admin.retry_arguments),
        cli_admin.run_retry,
    ),
    "purge": (
        "revoke every queued task of a name",
        cli_clients.with_curve(cli_admin.purge_arguments),
        cli_admin.run_purge,
    ),
    "keys": (
        "write a CURVE certificate pair, NAME.key and NAME.key_secret",
        _keys_arguments,
        _run_keys,
    ),
}


def _command(name: str, argv: list[str] | None, prog: str) -> int:
    """Run one command with a parser of its own (``python -m zerotask.broker`` and friends)."""
    description, arguments, run = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=prog, description=description[0].upper() + description[1:] + ".")
    arguments(parser)
    return run(parser.parse_args(argv), parser)


def broker_main(argv: list[str] | None = None, prog: str = "zerotask broker") -> None:
    sys.exit(_command("broker", argv, prog))


def node_main(argv: list[str] | None = None, prog: str = "zerotask node") -> None:
    sys.exit(_command("node", argv, prog))


def client_main(argv: list[str] | None = None) -> None:
    """The seed's client demo: prints 5 + 6 and 5 - 6."""
    from zerotask.client import Client

    parser = argparse.ArgumentParser(prog="python -m zerotask.client", description="Call the demo tasks add and subtract.")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    options = parser.parse_args(argv)
    with Client(options.broker, timeout=options.timeout) as client:
        print(f"add(5, 6) = {client.add(5, 6)}")
        print(f"subtract(5, 6) = {client.subtract(5, 6)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zerotask", description="A distributed task system over ZeroMQ and JSON-RPC 2.0.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (description, arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=description, description=description[0].upper() + description[1:] + ".")
        arguments(sub)
        sub.set_defaults(run=run, parser=sub)
    options = parser.parse_args(argv)
    sys.exit(options.run(options, options.parser))


if __name__ == "__main__":
    main()
