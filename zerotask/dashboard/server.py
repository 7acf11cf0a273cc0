"""The dashboard's HTTP server: static files, a JSON API over the broker's admin methods, and one
server-sent-event stream (``/events``) that pushes what :class:`BrokerWatch` learns.

Who can send a request here: any page the user's browser opens. So every request must name this server in
its Host header (against DNS rebinding), every POST must carry ``X-Zerotask: 1`` (a header a cross-site form
cannot set, and a cross-site script cannot without a preflight this server never grants) and, when the
browser sends one, an Origin of this server. What the broker returns is shown by app.js as text only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from zerotask import wire
from zerotask.dashboard.watch import PURGE, RETRY, TASK, TASKS, BrokerWatch, Hub
from zerotask.exceptions import UnknownTask, ZerotaskError

log = logging.getLogger(__name__)

DEFAULT_HTTP = "127.0.0.1:8080"
MAX_BODY_BYTES = 4096
KEEPALIVE_S = 15.0
STATIC = {"/app.js": "text/javascript", "/style.css": "text/css", "/index.html": "text/html"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def parse_http(address: str, insecure: bool = False) -> tuple[str, int]:
    """``host:port`` as a (host, port) pair. Raises ValueError for a malformed one, and for a host that is
    not loopback unless ``insecure``: the dashboard can retry, revoke and purge, and has no login."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--http wants HOST:PORT, not {address!r}")
    if not insecure and host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"refusing to serve the dashboard on {host}: it has no login, and anyone who reaches it may retry, "
                "revoke and purge (--insecure to do it anyway)"
            )
    return host, int(port)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], watch: BrokerWatch, hub: Hub) -> None:
        super().__init__(address, Handler)
        self.watch = watch
        self.hub = hub
        port = self.server_address[1]
        names = {address[0], "localhost", "127.0.0.1", "[::1]"} if address[0] in ("127.0.0.1", "localhost") else {address[0]}
        self.hosts = {f"{name}:{port}" for name in names}


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    # ---- routes ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        path = url.path
        if path == "/" or path.startswith("/task/"):
            self._static("/index.html")
        elif path in STATIC:
            self._static(path)
        elif path == "/events":
            self._stream()
        elif path == "/api/state":
            self._json(self.server.watch.snapshot())
        elif path == "/api/tasks":
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            params: dict[str, Any] = {key: query[key] for key in ("state", "method", "before") if key in query}
            params["limit"] = min(int(query.get("limit", "50")) if query.get("limit", "").isdigit() else 50, 500)
            self._broker(TASKS, params)
        elif path.startswith("/api/task/"):
            self._broker(TASK, {"task_id": unquote(path.removeprefix("/api/task/"))})
        else:
            self._error(HTTPStatus.NOT_FOUND, "no such page")

    def do_POST(self) -> None:
        if not self._host_ok() or not self._same_site():
            return
        body = self._body()
        if body is None:
            return
        path = urlsplit(self.path).path
        actions = {"/api/retry": (RETRY, "task_id"), "/api/revoke": (wire.REVOKE, "task_id"), "/api/purge": (PURGE, "method")}
        if path not in actions:
            self._error(HTTPStatus.NOT_FOUND, "no such action")
            return
        method, key = actions[path]
        value = body.get(key)
        if not isinstance(value, str) or not value:
            self._error(HTTPStatus.BAD_REQUEST, f"{key} must be a non-empty string")
            return
        self._broker(method, {key: value})

    # ---- checks ----------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        """Against DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host: evil.example."""
        if self.headers.get("Host", "") in self.server.hosts:
            return True
        self._error(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")
        return False

    def _same_site(self) -> bool:
        origin = self.headers.get("Origin")
        if self.headers.get("X-Zerotask") != "1":
            self._error(HTTPStatus.FORBIDDEN, "missing X-Zerotask header")
            return False
        if origin is not None and origin != f"http://{self.headers.get('Host')}":
            self._error(HTTPStatus.FORBIDDEN, "cross-site request refused")
            return False
        return True

    def _body(self) -> dict[str, Any] | None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            return None
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return None
        return body

    # ---- answers ---------------------------------------------------------------------------------

    def _broker(self, method: str, params: dict[str, Any]) -> None:
        """Call the broker with a Client of this request's thread; its error becomes a JSON error answer."""
        with self.server.watch.client() as client:
            try:
                result = client.rpc(method, params, client.timeout)
            except UnknownTask as problem:
                self._error(HTTPStatus.NOT_FOUND, str(problem))
                return
            except ZerotaskError as problem:
                self._error(HTTPStatus.BAD_GATEWAY, f"{type(problem).__name__}: {problem}")
                return
        self._json(result)

    def _static(self, name: str) -> None:
        data = resources.files("zerotask.dashboard").joinpath("static", name.lstrip("/")).read_bytes()
        self._send(HTTPStatus.OK, STATIC[name] + "; charset=utf-8", data)

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, "application/json", json.dumps(value).encode())

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def _send(self, status: HTTPStatus, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self) -> None:
        stream = self.server.hub.open()
        if stream is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too many open dashboards")
            return
        self.close_connection = True
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self._write_event(self.server.watch.snapshot())
            while not stream.dropped:
                try:
                    self._write_event(stream.messages.get(timeout=KEEPALIVE_S))
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
        except OSError:
            pass  # the page went away
        finally:
            self.server.hub.close(stream)

    def _write_event(self, message: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(message).encode() + b"\n\n")
        self.wfile.flush()


def serve(broker: str, http: str = DEFAULT_HTTP, insecure: bool = False, **client_options: Any) -> None:
    """Serve the dashboard for ``broker`` on ``http`` until interrupted. Raises ValueError for a bad or
    (without ``insecure``) non-loopback ``http``; ``client_options`` (keys) go to every broker Client."""
    address = parse_http(http, insecure)
    hub = Hub()
    watch = BrokerWatch(broker, hub, **client_options)
    watch.client().close()  # unusable keys raise ValueError here, not in a thread
    server = DashboardServer(address, watch, hub)
    watch.start()
    log.info("dashboard for %s on http://%s:%d/", broker, *server.server_address[:2])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        watch.stop()
        server.server_close()
