"""A tiny threaded HTTP server whose behaviour a test can switch at run time.

Modes: "ok" (serve the routes), "hang" (accept and never answer), "slow" (answer after
`delay` seconds), "500", "html" (an HTML error page), "truncated" (cut-off JSON).
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

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.hits: dict[str, int] = {}
        self._hang = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._handle(self)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeBackend":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._hang.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _send(self, handler, status: int, body: bytes, ctype: str = "application/json") -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        self.hits[path] = self.hits.get(path, 0) + 1
        mode = self.mode
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
        route = self.routes.get(path)
        if route is None:
            return self._send(handler, 404, b'{"detail": "Not Found"}')
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        result = route(self, params)
        status, payload = result if isinstance(result, tuple) else (200, result)
        self._send(handler, status, json.dumps(payload).encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
