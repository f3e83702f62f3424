"""A tiny threaded HTTP server whose behaviour a test can switch at run time.

Modes: "ok" (serve the routes), "hang" (accept and never answer), "slow" (answer after
`delay` seconds), "500", "html" (an HTML error page), "truncated" (cut-off JSON),
"garbage" (valid JSON of the wrong shape). `go_down()` / `come_up()` close and reopen the
port (connection refused in between), like a backend being stopped and started again.

A route is `fn(fake, params) -> payload | (status, payload) | (status, payload, headers)`;
it can read the request's headers as `fake.request_headers`. `ws_routes` maps a path to
`fn(fake, handler, params)` for WebSocket upgrades (see ws.py).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Route = Callable[["FakeBackend", dict[str, str]], Any]


class FakeBackend:
    routes: dict[str, Route] = {}
    ws_routes: dict[str, Any] = {}

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.hits: dict[str, int] = {}
        self.host = host
        self.websockets: list = []  # open WebSocket connections, closed by go_down()/stop()
        self._local = threading.local()
        self._hang = threading.Event()
        self.server = self._make_server(port)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def request_headers(self) -> dict[str, str]:
        return getattr(self._local, "headers", {})

    def _make_server(self, port: int) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._handle(self)

        server = ThreadingHTTPServer((self.host, port), Handler)
        server.daemon_threads = True
        return server

    def start(self) -> "FakeBackend":
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._hang.set()
        if self._thread is not None:  # stopping twice (a test, then its fixture) is harmless
            self.server.shutdown()
            self.server.server_close()
            self._thread = None
        self.drop_websockets()

    def drop_websockets(self) -> None:
        for ws in list(self.websockets):
            ws.close(send_close=False)
        self.websockets.clear()

    def go_down(self) -> None:
        """Stop listening and drop every connection: clients now get 'connection refused'."""
        self.stop()

    def come_up(self) -> None:
        """Listen again on the same port."""
        self._hang = threading.Event()
        self.server = self._make_server(self.port)
        self.start()

    def __enter__(self) -> "FakeBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _send(self, handler, status: int, body: bytes, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        self.hits[path] = self.hits.get(path, 0) + 1
        self._local.headers = {k.lower(): v for k, v in handler.headers.items()}
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        mode = self.mode
        if mode == "ok" and path in self.ws_routes and handler.headers.get("Upgrade", "").lower() == "websocket":
            return self.ws_routes[path](self, handler, params)
        if mode == "hang":
            self._hang.wait(60)
            return
        if mode == "slow":
            time.sleep(self.delay)
        if mode == "500":
            return self._send(handler, 500, b'{"error": "Internal Server Error"}')
        if mode == "html":
            return self._send(handler, 200, b"<!doctype html><html><body>Bad gateway</body></html>", "text/html")
        if mode == "truncated":
            return self._send(handler, 200, b'{"system": {"os": "posix", "comfyui_ver')
        if mode == "garbage":
            return self._send(handler, 200, b'{"hello": "world", "items": [1, 2, 3]}')
        route = self.routes.get(path)
        if route is None:
            return self._send(handler, 404, b'{"detail": "Not Found"}')
        result = route(self, params)
        headers: dict[str, str] = {}
        if isinstance(result, tuple):
            status, payload, *rest = result
            headers = rest[0] if rest else {}
        else:
            status, payload = 200, result
        self._send(handler, status, json.dumps(payload).encode(), headers=headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_forever(fake: FakeBackend, label: str) -> None:
    """Run a fake in the foreground until Ctrl+C (for `python -m tests.fakes.<name>`)."""
    with fake:
        print(f"fake {label} on {fake.url} (Ctrl+C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
