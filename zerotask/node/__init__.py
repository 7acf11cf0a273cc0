"""The node: connects to a broker, keeps its worker processes busy, and reports what they did.

:class:`Node` (``node.py``) talks to the broker; ``pool.py`` is its worker pool; ``worker.py`` one
forked worker process. ``python -m zerotask.node`` runs one.
"""

from zerotask.node.node import DEFAULT_BROKER, Node

__all__ = ["DEFAULT_BROKER", "Node"]
