"""The aggregator process: the thin shell between the bus and the pure stats engine.

It binds three sockets (bus/sockets.py), feeds decoded events to the engine, publishes
`snapshot.<service>` on every change and all of them at least once a second, sends its
own heartbeat, and answers requests (snapshot, refresh, export) on the ROUTER.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import deque
from typing import Any

import msgpack
import zmq

from bus.protocol import SCHEMA_VERSION, SEPARATOR, Publisher, Rejection, RejectCounter, decode, encode
from bus.sockets import Endpoints, close, drain, endpoint_in_use, new_context, pub_socket, router_socket, sub_socket

from . import export as exporter
from .engine import Engine
from .settings import Settings
from .store import Store, StoreUnavailable
from .timeline import Timeline

log = logging.getLogger("aggregator")

HEARTBEAT_INTERVAL = 1.0
TICK = 0.25  # how often probe liveness is re-evaluated (a dead probe shows unknown within 3 beats + this);
            # 10 Hz cost about a seventh of the aggregator's always-on CPU for no visible gain (figure 9)
# A step of the engine's clock longer than this is unobserved time (engine.MAX_OBSERVED_STEP):
# eight ticks. Below a probe's 3-beat deadline minus a beat, so a forward wall-clock step the
# timeline follows can never make a live probe look dead; a loop stalled longer than this on a
# loaded machine credits the stall unknown rather than guessing.
OBSERVED_STEP = 8 * TICK
DRAIN_BUDGET = (5000, 0.05)  # events and seconds per loop turn, so requests are never starved
SERVE_BUDGET = 0.02  # seconds of request handling per loop turn, so events are never starved either
MAX_PENDING = 10_000  # requests queued beyond this are dropped (the oldest first)
HISTORY_REUSE = 0.5  # seconds a built history may serve further snapshot replies (history is
                     # bucketed trend data clients re-fetch every few seconds; the live records
                     # in the same reply are never older than the last published update)


class AlreadyRunning(RuntimeError):
    pass


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_raw_body(topic: str, src: str, seq: int, packed_body: bytes) -> bytes:
    """bus.protocol.encode() for a body that is already msgpack bytes (the cached snapshot):
    the envelope map is written by hand around it, byte for byte what encode() writes."""
    head = b"".join(packb(x) for x in ("v", SCHEMA_VERSION, "src", src, "seq", seq, "ts", time.time(), "body"))
    return topic.encode("ascii") + SEPARATOR + b"\x85" + head + packed_body


class Aggregator:
    def __init__(self, endpoints: Endpoints, *, engine: Engine | None = None,
                 stop: threading.Event | None = None, settings: Settings | None = None,
                 metrics_port: int | None = None, mono=time.monotonic, wall=time.time) -> None:
        """`mono` and `wall` are the clock sources of the engine's timeline (aggregator/timeline.py);
        a test injects them to step the wall clock without touching the machine's."""
        self.endpoints = endpoints
        self.settings = settings or (engine.settings if engine else Settings())
        self.timeline = Timeline(mono, wall)
        self.engine = engine or Engine(clock=self.timeline, settings=self.settings, max_step=OBSERVED_STEP)
        self.stop = stop or threading.Event()
        self.instance = uuid.uuid4().hex[:12]
        self.rejects = RejectCounter()
        self.ready = threading.Event()
        self.metrics_port = self.settings.metrics_port if metrics_port is None else metrics_port
        self.store: Store | None = None
        self._pending: deque[list[bytes]] = deque()  # requests waiting for their turn
        self._histories: dict[str, tuple[float, bytes]] = {}  # range -> (built at, packed history)
        self._live: tuple[int, int, bytes] | None = None  # (publisher seq, state keys, packed entries but history)
        self.loop_errors = 0
        self.collector = None
        self.metrics_server = None

    # -- persistence ------------------------------------------------------------------
    def _open_store(self) -> None:
        if not self.settings.persist:
            self.engine.persistence = {"mode": "memory", "reason": "persist = false in [aggregator]"}
            return
        where = self.settings.resolved_data_dir()
        try:
            self.store = Store(where)
            try:
                buckets = self.store.restore(self.engine)
            except (sqlite3.DatabaseError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                # Damage the quick check did not see: set it aside like any unreadable file.
                self.engine.services.clear()
                self.store.close()
                self.store = Store(where, quarantine=f"unreadable ({exc.__class__.__name__}: {exc})")
                buckets = 0
        except StoreUnavailable as exc:
            self._to_memory(str(exc))
            return
        # Stored history may end ahead of the clock (written before a backward step): the
        # timeline starts at its end, so its buckets keep closing.
        self.timeline.not_before(self.engine.history_end())
        self.engine.persistence = {"mode": "sqlite", "path": str(self.store.path),
                                   "quarantined": str(self.store.quarantined) if self.store.quarantined else None}
        log.info("history in %s (%d buckets restored for %d services)", self.store.path, buckets,
                 len(self.engine.services))

    def _to_memory(self, reason: str) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self.engine.persistence = {"mode": "memory", "reason": reason}
        log.warning("history is kept in memory only and will not survive a restart: %s", reason)

    def _flush(self) -> None:
        if self.store is None:
            return
        try:
            self.store.flush(self.engine)
        except StoreUnavailable as exc:
            self._to_memory(str(exc))
        except Exception:  # a bug in the flush must not stop monitoring; the next flush retries
            log.exception("writing the history failed; retrying at the next flush")

    def _forget(self, service: str) -> None:
        """An expired service leaves the history file and the reused snapshot histories too."""
        self._histories.clear()
        if self.store is None:
            return
        try:
            self.store.forget(service)
        except StoreUnavailable as exc:
            self._to_memory(str(exc))

    def _bind(self):
        for ep in (self.endpoints.events, self.endpoints.snapshots, self.endpoints.requests):
            if endpoint_in_use(ep):
                raise AlreadyRunning(f"{ep} is already in use: another aggregator (or another program) is "
                                     "running there. Stop it, or choose other endpoints with --events/"
                                     "--snapshots/--requests.")
        ctx = new_context()
        try:
            events = sub_socket(ctx, self.endpoints.events, bind=True)
            pub = pub_socket(ctx, self.endpoints.snapshots, bind=True)
            router = router_socket(ctx, self.endpoints.requests)
        except zmq.ZMQError as exc:
            ctx.destroy(linger=0)
            raise AlreadyRunning(f"cannot bind the aggregator's endpoints: {exc}") from None
        return ctx, events, pub, router

    def run(self) -> None:
        ctx, events, pub, router = self._bind()
        self.publisher = Publisher(pub, "aggregator")
        self._open_store()
        if self.metrics_port:
            from .prom import EngineCollector, serve

            self.collector = EngineCollector()
            try:
                self.metrics_server = serve(self.metrics_port, self.collector)
                log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", self.metrics_port)
            except OSError as exc:
                log.warning("cannot serve Prometheus metrics on port %d: %s; continuing without them",
                            self.metrics_port, exc)
                self.collector = None
        poller = zmq.Poller()
        poller.register(events, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        next_tick = next_beat = time.monotonic()
        next_flush = time.monotonic() + self.settings.flush_interval
        self.ready.set()
        log.info("aggregator %s listening: events %s, snapshots %s, requests %s", self.instance,
                 self.endpoints.events, self.endpoints.snapshots, self.endpoints.requests)
        try:
            while not self.stop.is_set():
                timeout = max(0.0, min(next_tick, next_beat) - time.monotonic())
                # ceil: pyzmq truncates a float timeout, so a sub-millisecond wait became 0 and the
                # idle loop spun ~200 times a second before each tick (bench figure 9).
                ready = dict(poller.poll(0 if self._pending else math.ceil(min(timeout, 0.2) * 1000)))
                changed: set[str] = set()
                if events in ready:
                    changed |= self._ingest(drain(events, *DRAIN_BUDGET))
                if router in ready:
                    self._pending.extend(drain(router, 1000, 0.01))
                    while len(self._pending) > MAX_PENDING:  # a flood: the oldest go unanswered
                        self._pending.popleft()
                if self._pending:
                    self._serve(router)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    changed |= self._guard(self.engine.tick, set())
                beat = now >= next_beat
                if beat:
                    next_beat = now + HEARTBEAT_INTERVAL
                    changed = set(self.engine.services)  # everything, at least once a second
                    self._guard(self._heartbeat, None)
                for topic, body in self._guard(self.engine.pop_events, []):
                    if body.get("deleted") is True:  # an expired service: the Clone server's TTL delete
                        body["instance"] = self.instance
                        self.publisher.send(topic, body)
                        self._guard(lambda: self._forget(body["service"]), None)
                    else:
                        self.publisher.send(topic, body)
                records = {}
                for name in changed:
                    if name not in self.engine.services:  # forgotten in this turn
                        continue
                    record = self._guard(lambda: self.engine.record(name), None)
                    if record is not None:
                        records[name] = record
                        # Every update names its instance, so a client can never apply it to
                        # a state synced from another (a restarted aggregator's seq starts at 1).
                        record["instance"] = self.instance
                        self.publisher.send(f"snapshot.{name}", record)
                if beat and self.collector is not None:
                    self.collector.publish({"services": records, "alerts": self.engine.active_alerts(),
                                            "persistence": dict(self.engine.persistence)})
                if now >= next_flush:
                    next_flush = now + self.settings.flush_interval
                    self._flush()
        finally:
            self._flush()
            if self.store is not None:
                self.store.close()
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
            close(events, pub, router)
            ctx.term()

    def _guard(self, fn, default):
        """Run one step of the loop; a bug in it is logged (the first few times), never fatal."""
        try:
            return fn()
        except Exception:
            self.loop_errors += 1
            if self.loop_errors <= 5 or self.loop_errors % 1000 == 0:
                log.exception("aggregator loop step failed (%d so far); carrying on", self.loop_errors)
            return default

    def _ingest(self, frames: list[bytes]) -> set[str]:
        changed: set[str] = set()
        refused: list[Rejection] = []
        bad = self.engine.bad_events
        # Decoded lazily, one frame at a time: each event's objects are freed as soon as the
        # engine has applied it, as in a plain recv-and-decode loop. Decoding the batch into
        # a list first kept thousands of bodies alive into the older GC generations, and the
        # collector's passes over them cost a third of the ingest time (bench/profile).
        self.engine.ingest_batch(map(decode, frames), changed, refused)
        self.rejects.accepted += len(frames) - len(refused)
        for rejection in refused:
            if self.rejects.reject(rejection):
                log.warning("rejected a frame from %s: %s (%s); further ones of this kind from this source are "
                            "counted, not logged", rejection.src or "an unknown source", rejection.kind,
                            rejection.detail)
        if self.engine.bad_events != bad and bad < 10:  # the first few are logged, all are counted
            log.warning("skipped an event the engine could not apply (%d so far): %s",
                        self.engine.bad_events, self.engine.last_bad_event)
        return changed

    def _heartbeat(self) -> None:
        self.publisher.send("heartbeat.aggregator", {
            "interval": HEARTBEAT_INTERVAL, "instance": self.instance,
            "alerts": self.engine.active_alerts(), "bus": self.rejects.as_dict(),
            "persistence": dict(self.engine.persistence)})

    # -- requests ---------------------------------------------------------------------
    def _serve(self, router) -> None:
        deadline = time.monotonic() + SERVE_BUDGET
        while self._pending and time.monotonic() < deadline:
            frames = self._pending.popleft()
            if len(frames) != 2:
                continue
            identity, frame = frames
            msg = decode(frame)
            if isinstance(msg, Rejection) or msg.kind != "request":
                if isinstance(msg, Rejection):
                    self.rejects.reject(msg)
                continue
            op = msg.topic.split(".", 1)[1] if "." in msg.topic else ""
            try:
                if op == "snapshot":
                    reply = self._snapshot_frame(str(msg.body.get("range", "5m")), msg.body.get("id"))
                else:
                    body = self.handle(op, msg.body)
                    body.setdefault("id", msg.body.get("id"))
                    body["instance"] = self.instance
                    reply = encode(f"reply.{op or 'error'}", "aggregator", self.publisher.seq, body)
            except Exception as exc:  # a bad request must never take the aggregator down
                log.exception("request %s failed", op)
                reply = encode(f"reply.{op or 'error'}", "aggregator", self.publisher.seq,
                               {"ok": False, "error": f"{op} failed: {exc.__class__.__name__}",
                                "id": msg.body.get("id"), "instance": self.instance})
            try:
                router.send_multipart([identity, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away or is not reading; never block on it

    def _snapshot_frame(self, history_range: str, rid: Any) -> bytes:
        """`reply.snapshot` {ok, seq, state, id}, packed from two cached parts so a burst of
        late joiners costs one build, not one each:

        - the live state (records, alerts, persistence) is rebuilt whenever anything was
          published since it was built. Clone pattern: a client subscribed before asking, so
          it receives every update newer than the reply's seq, but none older. A reply built
          earlier than the client's subscription (an older cache) would hide the updates in
          between until the next once-a-second publish;
        - the history for the range (up to a few MB for hundreds of services) is reused for
          HISTORY_REUSE seconds: it is trend data, not Clone state.
        """
        now = time.monotonic()
        seq = self.publisher.seq
        if self._live is None or self._live[0] != seq:
            state = self.engine.state(None)
            state["instance"] = self.instance
            self._live = (seq, len(state) + 1, b"".join(packb(k) + packb(v) for k, v in state.items()))
        hist = self._histories.get(history_range)
        if hist is None or now - hist[0] > HISTORY_REUSE:
            hist = (now, packb("history") + packb(self.engine.history(history_range)))
            if len(self._histories) >= 8:  # ranges are few; an odd one must not pile up
                self._histories.clear()
            self._histories[history_range] = hist
        nstate, entries = self._live[1], self._live[2] + hist[1]
        state_bytes = bytes([0x80 | nstate]) + entries  # a fixmap: the state has a handful of keys
        # Same bytes encode() would produce for {ok, seq, state, id}.
        body = (b"\x84" + packb("ok") + packb(True) + packb("seq") + packb(seq) + packb("state") + state_bytes +
                packb("id") + packb(rid))
        return encode_raw_body("reply.snapshot", "aggregator", self.publisher.seq, body)

    def handle(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Every request but `snapshot` (see _snapshot_frame)."""
        if op == "refresh":
            service = body.get("service")
            self.publisher.send("control.refresh", {"service": service} if isinstance(service, str) else {})
            return {"ok": True}
        if op == "export":
            fmt, tier, since = body.get("format", "csv"), body.get("tier", "1m"), body.get("since", "24h")
            service = body.get("service")
            if not all(isinstance(x, str) for x in (fmt, tier, since)) or not isinstance(service, (str, type(None))):
                return {"ok": False, "error": "export wants format, tier, since (and service) as strings"}
            try:
                content, rows = exporter.export(self.engine, fmt, tier, since, service)
            except ValueError as exc:
                return {"ok": False, "error": f"export: {exc}"}
            return {"ok": True, "format": fmt, "tier": tier, "since": since, "content": content, "rows": rows}
        return {"ok": False, "error": f"unknown request {op!r} (known: snapshot, refresh, export)"}
