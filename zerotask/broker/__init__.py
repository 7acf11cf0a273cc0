"""The broker: queues tasks from clients, hands them to nodes, and answers with their outcomes.

:class:`Broker` (``transport.py``) is the process's event loop and sockets; the task logic is
:class:`~zerotask.broker.core.BrokerCore` (``core.py``), with features plugged in as hooks
(``hooks.py``); ``client_protocol.py`` and ``node_protocol.py`` turn the two sides' messages into
calls on the core. ``python -m zerotask.broker`` runs one.
"""

from zerotask.broker.transport import DEFAULT_BIND, DEFAULT_PUBLISH, DEFAULT_STORE, Broker

__all__ = ["DEFAULT_BIND", "DEFAULT_PUBLISH", "DEFAULT_STORE", "Broker"]
