"""A small, strict HTTP GET for probes: one total deadline, a capped body, no redirects.

Plain http.client rather than a client library: a probe needs exactly one verb and must
stay small in memory (the always-on footprint target is < 40 MB RSS per probe).
"""
from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 4 << 20  # /object_info can be large; anything past this is not a health answer


class ProbeError(Exception):
    """A failed request, with a kind for statistics and a message for a person."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # refused | timeout | http_status | not_json | too_large | redirect | network | wrong_service | auth | rate_limited
        self.message = message
        self.status = status


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]
    duration_ms: float

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            snippet = self.body[:60].decode("utf-8", "replace").strip()
            raise ProbeError("not_json", f"answered HTTP {self.status} but not JSON (starts with {snippet!r})",
                             self.status) from None


def get(url: str, timeout: float, headers: dict[str, str] | None = None,
        max_bytes: int = MAX_BODY_BYTES) -> Response:
    """GET `url`, finishing within `timeout` seconds all told, or raise ProbeError.

    Header values (API keys) are never put into an error message.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    where = f"{host}:{port}" if port else host
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    start = time.perf_counter()
    deadline = start + timeout

    def remaining() -> float:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise socket.timeout()
        return left

    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    try:
        conn.connect()
        conn.sock.settimeout(remaining())
        # No Origin header: ComfyUI answers 403 when Origin's host differs from Host.
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": "movie-director-health",
                                           **(headers or {})})
        conn.sock.settimeout(remaining())
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            conn.sock.settimeout(remaining()) if conn.sock else None
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ProbeError("too_large", f"{where} sent more than {max_bytes // 1024} KiB for {parts.path}; "
                                 "this is not a health answer", resp.status)
            chunks.append(chunk)
        duration_ms = (time.perf_counter() - start) * 1000
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if 300 <= resp.status < 400:
            raise ProbeError("redirect", f"{where} redirected {parts.path} to {hdrs.get('location', '?')}; "
                             "check the URL in the config", resp.status)
        return Response(resp.status, b"".join(chunks), hdrs, duration_ms)
    except ProbeError:
        raise
    except ConnectionRefusedError:
        raise ProbeError("refused", f"connection refused on {where}") from None
    except (socket.timeout, TimeoutError):
        raise ProbeError("timeout", f"no answer from {where} within {timeout:g} s") from None
    except socket.gaierror:
        raise ProbeError("network", f"cannot resolve host {host!r}; check the URL in the config") from None
    except (http.client.HTTPException, OSError) as exc:
        raise ProbeError("network", f"connection to {where} failed: {exc.__class__.__name__}") from None
    finally:
        conn.close()
