"""``python -m zerotask.broker``: run a broker (``-h`` for the options)."""

from zerotask.cli import broker_main

broker_main(prog="python -m zerotask.broker")
