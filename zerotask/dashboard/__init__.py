"""``zerotask dashboard``: a live web page of the broker's nodes, queues and tasks (server.py serves it)."""
