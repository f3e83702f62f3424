"""The Clone-pattern client: subscribe first, then ask for a snapshot, then apply newer updates.

Used by the Blender add-on, the CLI's `status`/`watch`, and the example subscriber. It
never blocks: call `poll()` from a loop or a timer, and read `services`, `alerts`,
`online` afterwards.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import zmq

from .protocol import MAX_REPLY_BYTES, Message, RejectCounter, Rejection, decode, encode
from .sockets import Endpoints, close, dealer_socket, drain, new_context, sub_socket

AGGREGATOR_SRC = "aggregator"
RESYNC_RETRY = 0.25  # seconds between snapshot requests until one is answered


class MonitorClient:
    def __init__(
        self,
        endpoints: Endpoints | None = None,
        *,
        history_range: str = "5m",
        offline_after: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context | None = None,
        name: str = "client",
    ) -> None:
        self.endpoints = endpoints or Endpoints.from_env()
        self.history_range = history_range
        self.offline_after = offline_after
        self.clock = clock
        self.name = name
        self._own_ctx = context is None
        self.ctx = context or new_context()
        self.sub = sub_socket(self.ctx, self.endpoints.snapshots,
                              prefixes=("snapshot.", "alert.", "heartbeat.aggregator"),
                              max_bytes=MAX_REPLY_BYTES)
        self.dealer = dealer_socket(self.ctx, self.endpoints.requests)
        self._poller = zmq.Poller()
        self._poller.register(self.sub, zmq.POLLIN)
        self._poller.register(self.dealer, zmq.POLLIN)
        self._ids = itertools.count(1)
        self.rejects = RejectCounter()

        self.services: dict[str, dict[str, Any]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.history: dict[str, Any] = {}
        self.aggregator: dict[str, Any] = {}  # last heartbeat body: instance, counters
        self.replies: dict[str, dict[str, Any]] = {}  # request id -> reply body
        self.online = False
        self.has_snapshot = False
        self._instance: str | None = None
        self._service_seq: dict[str, int] = {}
        self._last_seen = -1e18
        self._last_request = -1e18
        self.request_snapshot()

    # -- requests -------------------------------------------------------------------
    def _request(self, op: str, body: dict[str, Any]) -> str | None:
        rid = f"{self.name}-{next(self._ids)}"
        frame = encode(f"request.{op}", self.name, 0, {"id": rid, **body})
        try:
            self.dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # no aggregator connected: nothing is queued to replay later
            return None
        return rid

    def request_snapshot(self, history_range: str | None = None) -> str | None:
        if history_range:
            self.history_range = history_range
        self._last_request = self.clock()
        return self._request("snapshot", {"range": self.history_range})

    def refresh(self, service: str | None = None) -> str | None:
        """Ask every probe (or one service's probe) to check now."""
        return self._request("refresh", {"service": service} if service else {})

    def export(self, fmt: str = "csv", tier: str = "1m", since: str = "24h",
               service: str | None = None) -> str | None:
        """Ask the aggregator for an export; the reply lands in `replies[id]`."""
        body: dict[str, Any] = {"format": fmt, "tier": tier, "since": since}
        if service:
            body["service"] = service
        return self._request("export", body)

    # -- receiving ------------------------------------------------------------------
    def poll(self, max_messages: int = 500, max_seconds: float = 0.002, timeout_ms: int = 0) -> bool:
        """Handle what is waiting, within a budget. Returns True if visible state changed."""
        changed = False
        # One zero-timeout poll when idle, rather than a recv attempt on each socket.
        if not self._poller.poll(timeout_ms):
            return self._check_liveness()
        for frame in drain(self.dealer, max_messages, max_seconds):
            changed |= self._on_frame(frame, reply=True)
        for frame in drain(self.sub, max_messages, max_seconds):
            changed |= self._on_frame(frame, reply=False)
        return self._check_liveness() or changed

    def _check_liveness(self) -> bool:
        now = self.clock()
        if self.online and now - self._last_seen > self.offline_after:
            self.online = False
            return True
        # Not yet synced (aggregator down at start, or restarting): ask again soon. With
        # ZMQ_IMMEDIATE a request fails at once while disconnected, so retrying is free.
        if not self.has_snapshot and now - self._last_request > RESYNC_RETRY:
            self.request_snapshot()
        return False

    def _on_frame(self, frame: bytes, reply: bool) -> bool:
        msg = decode(frame, max_bytes=MAX_REPLY_BYTES)
        if isinstance(msg, Rejection):
            self.rejects.reject(msg)
            return False
        self.rejects.accepted += 1
        changed = False
        if msg.src == AGGREGATOR_SRC or reply:
            self._last_seen = self.clock()
            if not self.online:
                self.online = changed = True
        if reply:
            return self._on_reply(msg) or changed
        if msg.topic == "heartbeat.aggregator":
            return self._on_heartbeat(msg) or changed
        if msg.kind == "snapshot":
            return self._on_update(msg) or changed
        if msg.kind == "alert":
            return changed  # the active list arrives with each heartbeat
        return changed

    def _on_heartbeat(self, msg: Message) -> bool:
        body = msg.body
        instance = body.get("instance")
        if instance != self._instance:
            # A new (or restarted) aggregator: its sequence numbers start again.
            self._instance = instance
            self._service_seq.clear()
            self.has_snapshot = False
            self.request_snapshot()
        self.aggregator = body
        alerts = body.get("alerts", [])
        if alerts != self.alerts:
            self.alerts = alerts
            return True
        return False

    def _on_update(self, msg: Message) -> bool:
        name = msg.body["service"]
        if msg.seq <= self._service_seq.get(name, -1):
            return False  # older than what the snapshot already gave us
        self._service_seq[name] = msg.seq
        if self.services.get(name) == msg.body:
            return False
        self.services[name] = msg.body
        return True

    def _on_reply(self, msg: Message) -> bool:
        body = msg.body
        if msg.topic != "reply.snapshot":
            if "id" in body:
                self.replies[body["id"]] = body
            return False
        if not body.get("ok"):
            return False
        state = body.get("state", {})
        seq = body.get("seq", 0)
        for name, record in state.get("services", {}).items():
            if seq > self._service_seq.get(name, -1):
                self.services[name] = record
                self._service_seq[name] = seq
        self.alerts = state.get("alerts", self.alerts)
        self.history = state.get("history", {})
        self._instance = state.get("instance", self._instance)
        self.has_snapshot = True
        return True

    def close(self) -> None:
        close(self.sub, self.dealer)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "MonitorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
