"""The server side of RFC 6455 WebSocket, just enough for fakes: the handshake on an
http.server request, text frames out, ping/pong and close in.

Hand-written because the fakes are http.server based and one port must serve both HTTP
and /ws, as ComfyUI does. The probe's side is the real `websockets` client, so any
framing mistake here shows up as a failing test.
"""
from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def is_upgrade(handler) -> bool:
    return handler.headers.get("Upgrade", "").lower() == "websocket"


class WebSocketConnection:
    def __init__(self, handler) -> None:
        self.handler = handler
        self.sock: socket.socket = handler.connection
        self.rfile = handler.rfile
        self._send_lock = threading.Lock()
        self.closed = False

    @classmethod
    def accept(cls, handler) -> "WebSocketConnection":
        key = handler.headers.get("Sec-WebSocket-Key", "")
        digest = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", digest)
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True  # after the socket ends, http.server must not read on
        return cls(handler)

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self._send_lock:
            self.sock.sendall(header + payload)

    def send_text(self, text: str) -> bool:
        if self.closed:
            return False
        try:
            self._frame(0x1, text.encode())
            return True
        except OSError:
            self.closed = True
            return False

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise ConnectionError("peer went away")
        return data

    def serve(self) -> None:
        """Read frames until the peer closes: answer pings, echo close, ignore data."""
        try:
            while not self.closed:
                b1, b2 = self._read(2)
                opcode, masked, n = b1 & 0x0F, b2 & 0x80, b2 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                mask = self._read(4) if masked else b"\0\0\0\0"
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read(n)))
                if opcode == 0x9:
                    self._frame(0xA, payload)
                elif opcode == 0x8:
                    self._frame(0x8, payload[:2])
                    break
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            self.close(send_close=False)

    def close(self, send_close: bool = True) -> None:
        """Close; `send_close=False` drops the TCP connection the way a dying server does."""
        if self.closed and not send_close:
            pass
        if send_close and not self.closed:
            try:
                self._frame(0x8, struct.pack("!H", 1001))
            except OSError:
                pass
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
