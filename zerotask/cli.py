"""The ``zerotask`` command: ``zerotask broker``, ``zerotask node``, ``zerotask call``.

``python -m zerotask.broker``, ``python -m zerotask.node`` and ``python -m zerotask.client`` call
into the same functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from zerotask import jsonrpc

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _broker_parser(prog: str) -> argparse.ArgumentParser:
    from zerotask.broker import DEFAULT_BIND, DEFAULT_PUBLISH, DEFAULT_STORE

    parser = argparse.ArgumentParser(
        prog=prog, description="Run a zerotask broker: queues tasks, hands them to nodes, returns results."
    )
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, metavar="ENDPOINT", help=f"request socket for clients and nodes (default {DEFAULT_BIND})"
    )
    parser.add_argument(
        "--publish", default=DEFAULT_PUBLISH, metavar="ENDPOINT", help=f"event socket (default {DEFAULT_PUBLISH})"
    )
    parser.add_argument(
        "--store", default=DEFAULT_STORE, metavar="memory|PATH", help=f"'memory', or an SQLite file (default {DEFAULT_STORE})"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, metavar="SECONDS", help="heartbeat interval with nodes (default 1.0)"
    )
    parser.add_argument(
        "--liveness", type=int, default=3, metavar="N", help="missed heartbeats before a node is declared dead (default 3)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="larger messages disconnect their sender (default 16 MiB)",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="forget outcomes older than this (default 1 day; 0: never)",
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    return parser


def broker_main(argv: list[str] | None = None, prog: str = "python -m zerotask.broker") -> None:
    options = _broker_parser(prog).parse_args(argv)
    _configure_logging(options.log_level)
    from zerotask.broker import Broker

    Broker(
        bind=options.bind,
        publish=options.publish,
        store=options.store,
        heartbeat_s=options.heartbeat,
        liveness=options.liveness,
        max_message_bytes=options.max_message_bytes,
        result_ttl_s=options.result_ttl or None,
    ).start()


def _node_parser(prog: str) -> argparse.ArgumentParser:
    from zerotask.node import DEFAULT_BROKER

    parser = argparse.ArgumentParser(
        prog=prog, description="Run a zerotask node: worker processes that run the tasks of the given modules."
    )
    parser.add_argument(
        "modules", nargs="*", metavar="MODULE", help="task modules to import (default: the demo tasks add and subtract)"
    )
    parser.add_argument(
        "--broker", default=DEFAULT_BROKER, metavar="ENDPOINT", help=f"the broker's request endpoint (default {DEFAULT_BROKER})"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="worker processes (default: the CPU count)"
    )
    parser.add_argument("--name", default=None, help="the name the broker shows for this node (default host-pid)")
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, metavar="SECONDS", help="heartbeat interval with the broker (default 1.0)"
    )
    parser.add_argument("--liveness", type=int, default=3, metavar="N", help="missed heartbeats before reconnecting (default 3)")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        metavar="N",
        help="tasks to hold beyond one per worker (default: adapt, none for tasks of 1 ms or more)",
    )
    parser.add_argument(
        "--grace", type=float, default=30.0, metavar="SECONDS", help="on SIGTERM, how long running tasks may finish (default 30)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, metavar="SECONDS", help="kill tasks that run longer (tasks may set their own)"
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    return parser


def import_task_modules(modules: list[str]) -> None:
    """Import each module (a dotted name, or a path to a .py file) so that its @task functions register."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `zerotask node tasks` finds ./tasks.py, as with celery -A
    for module in modules or ["zerotask.demo"]:
        if module.endswith(".py"):
            directory, filename = os.path.split(os.path.abspath(module))
            sys.path.insert(0, directory)
            module = filename[:-3]
        importlib.import_module(module)


def node_main(argv: list[str] | None = None, prog: str = "python -m zerotask.node") -> None:
    options = _node_parser(prog).parse_args(argv)
    _configure_logging(options.log_level)
    import_task_modules(options.modules)
    from zerotask.node import Node

    Node(
        broker=options.broker,
        workers=options.workers,
        name=options.name,
        heartbeat_s=options.heartbeat,
        liveness=options.liveness,
        prefetch=options.prefetch,
        grace_s=options.grace,
        time_limit_s=options.time_limit,
    ).start()


def _parse_argument(text: str) -> Any:
    """A command-line argument is JSON when it parses as JSON, a string otherwise."""
    try:
        return jsonrpc.loads(text)
    except jsonrpc.InvalidMessage:
        return text


def call_main(argv: list[str] | None = None, prog: str = "zerotask call") -> int:
    from zerotask.client import DEFAULT_ENDPOINT, Client
    from zerotask.exceptions import ZerotaskError

    parser = argparse.ArgumentParser(prog=prog, description="Call a task and print its result as JSON.")
    parser.add_argument("method", help="the task name, e.g. add")
    parser.add_argument("args", nargs="*", metavar="ARG", help="positional arguments, each JSON or else a string")
    parser.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments as a JSON object")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    options = parser.parse_args(argv)
    kwargs = _parse_argument(options.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")
    with Client(options.broker, timeout=options.timeout) as client:
        try:
            result = client.call(options.method, *[_parse_argument(a) for a in options.args], **kwargs)
        except ZerotaskError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(jsonrpc.dumps(result).decode())
    return 0


def map_main(argv: list[str] | None = None, prog: str = "zerotask map") -> int:
    from zerotask.client import DEFAULT_ENDPOINT, AsyncClient
    from zerotask.exceptions import ZerotaskError
    from zerotask.progress import Progress

    parser = argparse.ArgumentParser(
        prog=prog, description="Run a task once per input and print the results (one JSON line each) in input order."
    )
    parser.add_argument("method", help="the task name; it gets one input per call")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="inputs, each JSON or else a string (default: lines of stdin)")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument("--window", type=int, default=1000, metavar="N", help="tasks in flight at most (default 1000)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="the longest wait for one result")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    options = parser.parse_args(argv)
    inputs = options.inputs or [line.rstrip("\n") for line in sys.stdin]
    show = sys.stderr.isatty() if options.progress is None else options.progress
    progress = Progress(len(inputs), sys.stderr) if show else None
    with AsyncClient(options.broker, timeout=options.timeout) as client:
        try:
            for result in client.map(options.method, (_parse_argument(text) for text in inputs), options.window):
                print(jsonrpc.dumps(result).decode())
                if progress is not None:
                    progress.advance()
        except ZerotaskError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            if progress is not None:
                progress.close()
    return 0


def events_main(argv: list[str] | None = None, prog: str = "zerotask events") -> int:
    from zerotask.client import DEFAULT_ENDPOINT, Client

    parser = argparse.ArgumentParser(prog=prog, description="Print the broker's task events, one JSON line each.")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument(
        "--idle-timeout", type=float, default=None, metavar="SECONDS", help="stop after this long without an event"
    )
    options = parser.parse_args(argv)
    with Client(options.broker, timeout=10) as client:
        try:
            for event in client.events(options.idle_timeout):
                print(jsonrpc.dumps(event).decode(), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def client_main(argv: list[str] | None = None) -> None:
    """The seed's client demo: prints 5 + 6 and 5 - 6."""
    from zerotask.client import DEFAULT_ENDPOINT, Client

    parser = argparse.ArgumentParser(prog="python -m zerotask.client", description="Call the demo tasks add and subtract.")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    options = parser.parse_args(argv)
    with Client(options.broker, timeout=options.timeout) as client:
        print(f"add(5, 6) = {client.add(5, 6)}")
        print(f"subtract(5, 6) = {client.subtract(5, 6)}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "broker": "run a broker",
        "node": "run a node",
        "call": "call a task and print its result",
        "map": "call a task once per input, results in order, with a progress bar",
        "events": "print the broker's task events as they happen",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: zerotask {broker,node,call,map,events} ...\n")
        for name, help_text in commands.items():
            print(f"  {name:8} {help_text}")
        print("\nzerotask COMMAND -h shows the options of each.")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "broker":
        broker_main(rest, prog="zerotask broker")
    elif command == "node":
        node_main(rest, prog="zerotask node")
    elif command == "map":
        sys.exit(map_main(rest))
    elif command == "events":
        sys.exit(events_main(rest))
    else:
        sys.exit(call_main(rest))


if __name__ == "__main__":
    main()
