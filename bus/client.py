"""The Clone-pattern client: subscribe first, then ask for a snapshot, then apply newer updates.

Used by the Blender add-on, the CLI's `status`/`watch`, and the example subscriber. It
never blocks: call `poll()` from a loop or a timer, and read `services`, `alerts`,
`online` afterwards.

It is the ZeroMQ Guide's Clone client, an explicit state machine (`client.state`):

    INITIAL  no trusted state for any aggregator instance; a snapshot request goes out at
             once and again every RESYNC_RETRY seconds while it cannot be sent.
    SYNCING  a request is out; updates that arrive meanwhile are buffered, but only those
             known to come from an instance, and only the reply's instance's are kept.
             No reply within RESYNC_RETRY: ask again.
    ACTIVE   synced to one instance: apply its updates whose seq is newer than what the
             snapshot (or an earlier update) gave for that service.

Back to INITIAL, forgetting every per-service seq, on: a heartbeat from another instance;
an update or reply from another instance; the update stream's seq going backwards (its
publisher restarted); `offline_after` seconds with no aggregator message (also offline).
A snapshot reply from another instance resets the client the same way and, being itself
a snapshot, is adopted at once, so a restarted aggregator's state shows the moment its
reply arrives, whatever order its heartbeat and reply come in. Sequence numbers are only
ever compared within one instance: a new instance starts again at 1.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Callable

import zmq

from .protocol import MAX_REPLY_BYTES, Message, RejectCounter, Rejection, decode, encode, valid_service
from .sockets import Endpoints, close, dealer_socket, drain, new_context, sub_socket

AGGREGATOR_SRC = "aggregator"
RESYNC_RETRY = 0.25  # seconds between snapshot requests until one is answered

INITIAL, SYNCING, ACTIVE = "initial", "syncing", "active"

# Bounds on what the aggregator (or anything bound on its endpoints) can make us keep.
MAX_SERVICES = 4096  # records beyond it are refused (counted in `refused`)
MAX_REPLIES = 64  # unclaimed export/refresh replies; the oldest is dropped beyond it
MAX_BUFFERED = 10_000  # updates held while syncing (the SUB socket's own high-water mark)


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
        self.refused = 0  # records, replies and buffered updates dropped by a bound above

        self.services: dict[str, dict[str, Any]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.history: dict[str, Any] = {}
        self.aggregator: dict[str, Any] = {}  # last heartbeat body: instance, counters
        self.replies: dict[str, dict[str, Any]] = {}  # request id -> reply body
        self.online = False
        self.state = INITIAL
        self._instance: str | None = None  # the instance the state is synced to (ACTIVE only)
        self._service_seq: dict[str, int] = {}
        self._gone: dict[str, int] = {}  # deleted service -> seq of its delete, so an older reply cannot revive it
        self._buffer: deque[tuple[str, Message]] = deque()  # (instance, update) received while not ACTIVE
        self._asked: dict[str, None] = {}  # ids of export/refresh requests awaiting a reply, oldest first
        # The update stream (SUB): the seq of its last aggregator message, and which instance
        # it is known to come from (its last heartbeat), None once its seq went backwards.
        self._stream_seq = -1
        self._stream_instance: str | None = None
        self._last_seen = -1e18
        self._last_request = -1e18
        self.request_snapshot()

    # -- state ----------------------------------------------------------------------
    @property
    def has_snapshot(self) -> bool:
        return self.state == ACTIVE

    @has_snapshot.setter
    def has_snapshot(self, value: bool) -> None:
        """`client.has_snapshot = False` forgets the snapshot and syncs again (tests, resync)."""
        if value:
            raise ValueError("only a snapshot reply makes has_snapshot true")
        self._reset()

    @property
    def instance(self) -> str | None:
        """The aggregator instance the state is synced to (None unless ACTIVE)."""
        return self._instance

    def _reset(self) -> None:
        """To INITIAL: nothing learnt from any instance is trusted any more. `services` stay
        on show (with `online` telling whether they are live) until a snapshot replaces them."""
        self.state = INITIAL
        self._instance = None
        self._service_seq.clear()
        self._gone.clear()
        self._buffer.clear()
        self._last_request = -1e18  # ask at the next poll, not RESYNC_RETRY later

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
        """Ask for the whole state. In ACTIVE this refreshes history and records; otherwise
        it is the sync request (SYNCING once sent, INITIAL while it cannot be sent)."""
        if history_range:
            self.history_range = history_range
        self._last_request = self.clock()
        rid = self._request("snapshot", {"range": self.history_range})
        if self.state != ACTIVE:
            self.state = SYNCING if rid else INITIAL
        return rid

    def _ask(self, op: str, body: dict[str, Any]) -> str | None:
        rid = self._request(op, body)
        if rid is not None:
            self._asked[rid] = None
            _trim(self._asked, MAX_REPLIES)  # replies that never came
        return rid

    def refresh(self, service: str | None = None) -> str | None:
        """Ask every probe (or one service's probe) to check now."""
        return self._ask("refresh", {"service": service} if service else {})

    def export(self, fmt: str = "csv", tier: str = "1m", since: str = "24h",
               service: str | None = None) -> str | None:
        """Ask the aggregator for an export; the reply lands in `replies[id]`."""
        body: dict[str, Any] = {"format": fmt, "tier": tier, "since": since}
        if service:
            body["service"] = service
        return self._ask("export", body)

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
        changed = False
        if self.online and now - self._last_seen > self.offline_after:
            # Silence: whoever answers next may be another instance, so sync afresh.
            self.online = False
            changed = True
            self._reset()
        # Not synced (aggregator down at start, restarting, or the reply lost): ask again.
        # With ZMQ_IMMEDIATE a request fails at once while disconnected, so retrying is free.
        if self.state != ACTIVE and now - self._last_request >= RESYNC_RETRY:
            self.request_snapshot()
        return changed

    def _on_frame(self, frame: bytes, reply: bool) -> bool:
        msg = decode(frame, max_bytes=MAX_REPLY_BYTES)
        if isinstance(msg, Rejection):
            self.rejects.reject(msg)
            return False
        self.rejects.accepted += 1
        if not reply and msg.src != AGGREGATOR_SRC:
            return False  # only the aggregator publishes on the snapshots endpoint
        self._last_seen = self.clock()
        changed = not self.online
        self.online = True
        if reply:
            return self._on_reply(msg) or changed
        if msg.seq <= self._stream_seq:
            # One publisher's seq only grows: the aggregator restarted (kill -9 and start
            # again), and until its heartbeat nobody knows which instance this stream is.
            if self._stream_instance is not None and self._stream_instance == self._instance:
                self._reset()  # the instance we are synced to is gone
            self._stream_instance = None
        self._stream_seq = msg.seq
        if msg.topic == "heartbeat.aggregator":
            return self._on_heartbeat(msg) or changed
        if msg.kind == "snapshot":
            return self._on_update(msg) or changed
        return changed  # alert.*: the active list arrives with each heartbeat

    def _on_heartbeat(self, msg: Message) -> bool:
        body = msg.body
        instance = _text(body.get("instance"))
        if instance is not None:
            self._stream_instance = instance
            if self.state == ACTIVE and instance != self._instance:
                self._reset()  # a new (or restarted) aggregator: its sequence numbers start again
        self.aggregator = body
        alerts = body.get("alerts", [])
        if isinstance(alerts, list) and alerts != self.alerts:
            self.alerts = alerts
            return True
        return False

    def _on_update(self, msg: Message) -> bool:
        # Whose update: the instance it names (if the aggregator stamps one), else the one
        # the stream is known to come from; None when nobody knows.
        instance = _text(msg.body.pop("instance", None)) or self._stream_instance
        if self.state == ACTIVE:
            if instance is None or instance == self._instance:
                return self._apply(msg)
            self._reset()  # an update from another instance: nothing here is current any more
        if instance is not None:  # never trusted now; kept for that instance's snapshot
            if len(self._buffer) >= MAX_BUFFERED:
                self._buffer.popleft()
                self.refused += 1
            self._buffer.append((instance, msg))
        return False

    def _apply(self, msg: Message) -> bool:
        """One update from the synced instance, if newer than what we have for its service."""
        body, name = msg.body, msg.body["service"]
        if msg.seq <= max(self._service_seq.get(name, -1), self._gone.get(name, -1)):
            return False  # older than what the snapshot (or an update, or a delete) already gave us
        if body.get("deleted") is True:  # the aggregator expired it (contract 1)
            self._service_seq.pop(name, None)
            self._gone[name] = msg.seq
            _trim(self._gone, MAX_SERVICES)
            return self.services.pop(name, None) is not None
        if name not in self.services and len(self.services) >= MAX_SERVICES:
            self.refused += 1
            return False
        self._gone.pop(name, None)
        self._service_seq[name] = msg.seq
        if self.services.get(name) == body:
            return False
        self.services[name] = body
        return True

    def _on_reply(self, msg: Message) -> bool:
        body = msg.body
        if msg.topic == "reply.snapshot":
            return self._on_snapshot(body) if body.get("ok") else False
        instance = _text(body.get("instance"))
        if self.state == ACTIVE and instance is not None and instance != self._instance:
            self._reset()
        rid = body.get("id")
        if isinstance(rid, str) and rid in self._asked:  # only answers to what we asked are kept
            del self._asked[rid]
            self.replies[rid] = body
            self.refused += _trim(self.replies, MAX_REPLIES)  # never claimed by the caller
        return False

    def _on_snapshot(self, body: dict[str, Any]) -> bool:
        state, seq = body.get("state"), body.get("seq")
        records = state.get("services") if isinstance(state, dict) else None
        if type(seq) is not int or not isinstance(records, dict):
            return False  # not a snapshot this client can use
        instance = _text(state.get("instance"))
        fresh = {}
        for name, record in records.items():
            if valid_service(name) and isinstance(record, dict):
                if len(fresh) >= MAX_SERVICES:
                    self.refused += 1
                    continue
                fresh[name] = record
        if self.state == ACTIVE and instance == self._instance:
            # A later reply from the instance we follow: take what is newer than we have,
            # and drop what it no longer lists unless an update newer than it created it.
            for name, record in fresh.items():
                if seq > max(self._service_seq.get(name, -1), self._gone.get(name, -1)):
                    self.services[name] = record
                    self._service_seq[name] = seq
            for name in [n for n in self.services if n not in fresh and self._service_seq.get(n, -1) < seq]:
                del self.services[name]
                self._service_seq.pop(name, None)
        else:
            # The sync: from INITIAL/SYNCING, or a reply from another instance (reset first).
            buffered = [m for who, m in self._buffer if who == instance] if instance is not None else []
            self._reset()
            self.services = fresh
            self._service_seq = dict.fromkeys(fresh, seq)
            self._instance = instance
            self.state = ACTIVE
            for msg in buffered:  # what that instance published after the reply's seq
                self._apply(msg)
        alerts = state.get("alerts")
        if isinstance(alerts, list):
            self.alerts = alerts
        history = state.get("history")
        self.history = history if isinstance(history, dict) else {}
        return True

    def close(self) -> None:
        close(self.sub, self.dealer)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "MonitorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _trim(entries: dict, cap: int) -> int:
    """Drop the oldest entries (dicts keep insertion order) beyond `cap`; returns how many."""
    over = len(entries) - cap
    for key in list(itertools.islice(entries, max(over, 0))):
        del entries[key]
    return max(over, 0)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
