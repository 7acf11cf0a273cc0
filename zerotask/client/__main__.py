"""``python -m zerotask.client``: call the demo tasks add and subtract (``-h`` for the options)."""

from zerotask.cli import client_main

client_main()
