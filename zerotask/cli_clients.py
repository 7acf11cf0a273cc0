"""The commands that are clients of a broker: ``zerotask call``, ``map``, ``events`` and ``dashboard``
(registered in :mod:`zerotask.cli`), and the CURVE options every client and node command takes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from zerotask import auth, jsonrpc
from zerotask.client.calls import DEFAULT_ENDPOINT
from zerotask.exceptions import ZerotaskError

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
BROKER_HELP = "the broker's endpoint, or several separated by commas: one is used, the next when it is gone (%(default)s)"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# ---- clients ---------------------------------------------------------------------------------------

ClientType = TypeVar("ClientType")


def curve_arguments(parser: argparse.ArgumentParser) -> None:
    """--curve-secret and --broker-key, for a node or a client of a CURVE broker."""
    group = parser.add_argument_group("security (CURVE)")
    group.add_argument(
        "--curve-secret", metavar="FILE", help=f"this peer's secret certificate (default: ${auth.ENV_CURVE_SECRET})"
    )
    group.add_argument("--broker-key", metavar="FILE", help=f"the broker's public certificate (default: ${auth.ENV_BROKER_KEY})")


def _client(
    make: Callable[..., ClientType], options: argparse.Namespace, parser: argparse.ArgumentParser, **kwargs: Any
) -> ClientType:
    """A Client or AsyncClient for the command's --broker and keys; exits with a usage error for unusable keys."""
    try:
        return make(options.broker, curve_secret=options.curve_secret, broker_key=options.broker_key, **kwargs)
    except ValueError as problem:
        parser.error(str(problem))


def _parse_argument(text: str) -> Any:
    """A command-line argument is JSON when it parses as JSON, a string otherwise."""
    try:
        return jsonrpc.loads(text)
    except jsonrpc.InvalidMessage:
        return text


def call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help="the task name, e.g. add")
    parser.add_argument("args", nargs="*", metavar="ARG", help="positional arguments, each JSON or else a string")
    parser.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments as a JSON object")
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=BROKER_HELP)
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    curve_arguments(parser)


def run_call(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from zerotask.client import Client

    kwargs = _parse_argument(options.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")
    with _client(Client, options, parser, timeout=options.timeout) as client:
        try:
            result = client.call(options.method, *[_parse_argument(a) for a in options.args], **kwargs)
        except ZerotaskError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(jsonrpc.dumps(result).decode())
    return 0


def map_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("method", help="the task name; it gets one input per call")
    add("inputs", nargs="*", metavar="INPUT", help="inputs, each JSON or else a string (default: lines of stdin)")
    add("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=BROKER_HELP)
    add("--window", type=int, default=1000, metavar="N", help="tasks in flight at most (%(default)s)")
    add("--timeout", type=float, default=None, metavar="SECONDS", help="the longest wait for one result")
    add("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")
    curve_arguments(parser)


def run_map(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from zerotask.client import AsyncClient
    from zerotask.progressbar import ProgressBar

    inputs = options.inputs or [line.rstrip("\n") for line in sys.stdin]
    show = sys.stderr.isatty() if options.progress is None else options.progress
    progress = ProgressBar(len(inputs), sys.stderr) if show else None
    with _client(AsyncClient, options, parser, timeout=options.timeout) as client:
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


def events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=BROKER_HELP)
    parser.add_argument(
        "--idle-timeout", type=float, default=None, metavar="SECONDS", help="stop after this long without an event"
    )
    curve_arguments(parser)


def run_events(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from zerotask.client import Client

    with _client(Client, options, parser, timeout=10) as client:
        try:
            for event in client.events(options.idle_timeout):
                print(jsonrpc.dumps(event).decode(), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=BROKER_HELP)
    parser.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to serve it (%(default)s)")
    parser.add_argument("--insecure", action="store_true", help="serve beyond this machine: it has no login")
    curve_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)


def run_dashboard(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from zerotask.dashboard import server

    configure_logging(options.log_level)
    try:
        keys = {"curve_secret": options.curve_secret, "broker_key": options.broker_key}
        server.serve(options.broker, options.http, options.insecure, **keys)
    except ValueError as problem:
        parser.error(str(problem))
    return 0


def with_curve(arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
    def both(parser: argparse.ArgumentParser) -> None:
        arguments(parser)
        curve_arguments(parser)

    return both
