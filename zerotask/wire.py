"""The names on the wire: every JSON-RPC method zerotask sends or answers, its own error codes, the task
states. One place, so that a name is spelled once and docs/protocol.md can be checked against it.

The JSON-RPC specification's own error codes (-32700 ... -32603) live with the envelope in
:mod:`zerotask.jsonrpc`; the codes here are zerotask's, in the range the specification leaves to
implementations.
"""

from __future__ import annotations

import re

# ---- methods clients call on the broker (docs/protocol.md, section 5) ------------------------------
SUBMIT = "zerotask.broker.submit"
CALL = "zerotask.broker.call"
STATUS = "zerotask.broker.status"
RESULT = "zerotask.broker.result"
REVOKE = "zerotask.broker.revoke"
NOTIFY = "zerotask.broker.notify"
PING = "zerotask.broker.ping"
INFO = "zerotask.broker.info"
PROGRESS = "zerotask.broker.progress"
WORKFLOW = "zerotask.broker.workflow"  # start a workflow (zerotask.canvas): 5.15
DISCOVER = "rpc.discover"  # the OpenRPC convention: JSON-RPC reserves rpc.* for extensions (5.14)

# ---- methods operators call on the broker (section 5; with CURVE, admin keys only) -----------------
INSPECT = "zerotask.broker.inspect"
TASKS = "zerotask.broker.tasks"
TASK = "zerotask.broker.task"
RETRY_TASK = "zerotask.broker.retry"
PURGE = "zerotask.broker.purge"

# ---- methods nodes call on the broker (section 6) -------------------------------------------------
CONNECT = "zerotask.broker.connect"
REQUEST = "zerotask.broker.request"
RUNNING_TASKS = "zerotask.broker.running"
FINISHED_TASKS = "zerotask.broker.finished"
RELEASE = "zerotask.broker.release"
HEARTBEAT = "zerotask.broker.heartbeat"
DISCONNECT = "zerotask.broker.disconnect"
REPORT_PROGRESS = "zerotask.broker.report_progress"

# A control method: never a task name, so a misspelled one is an error rather than a queued task.
CONTROL_PREFIX = "zerotask."
# The method of a workflow's own record in the store (it waits there, SCHEDULED, until the workflow ends):
# reserved, so no caller may submit a task of that name.
WORKFLOW_TASK = "zerotask.workflow"
# A task that the broker runs itself, in its own process (@task(name="broker.x"), the seed's example).
BROKER_TASK_PREFIX = "broker."

# ---- notifications the broker sends (section 7) ---------------------------------------------------
NODE_RUN = "zerotask.node.run"
NODE_HEARTBEAT = "zerotask.node.heartbeat"
NODE_RECONNECT = "zerotask.node.reconnect"
NODE_REVOKE = "zerotask.node.revoke"
CLIENT_FINISHED = "zerotask.client.finished"
EVENT_PREFIX = "zerotask.event."

# ---- zerotask's error codes (section 3) ----------------------------------------------------------
TASK_FAILED = -32000
UNKNOWN_TASK = -32001
TIMED_OUT = -32002
NOT_READY = -32003
REVOKED_CODE = -32004
QUEUE_FULL = -32005  # backpressure: the broker refuses more work now; try again later
FORBIDDEN = -32006  # with CURVE: this key's role may not call this method, or reuse this task id
STORE_UNAVAILABLE = -32007  # the broker cannot reach its store (Redis down): nothing was accepted; try again

# ---- task states (section 4.2) -------------------------------------------------------------------
SCHEDULED = "SCHEDULED"  # waits for its time (an ETA or countdown); then QUEUED
QUEUED = "QUEUED"
ASSIGNED = "ASSIGNED"  # held by a node; what the store records for a task a node holds
RUNNING = "RUNNING"  # held by a node that said it started it; kept in the broker's memory only
RETRY = "RETRY"
FINISHED = "FINISHED"
FAILED = "FAILED"
REVOKED = "REVOKED"
FINAL_STATES = frozenset({FINISHED, FAILED, REVOKED})

DEFAULT_QUEUE = "default"  # the queue of a task that names none, and the one a node serves unless told
MAX_PRIORITY = 9  # priorities are 0 (the default) to 9; higher goes first
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # what a queue may be called
