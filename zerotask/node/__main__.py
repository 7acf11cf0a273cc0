"""``python -m zerotask.node [MODULE...]``: run a node (``-h`` for the options)."""

from zerotask.cli import node_main

node_main(prog="python -m zerotask.node")
