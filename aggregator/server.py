"""The aggregator process: the thin shell between the bus and the pure stats engine.

It binds three sockets (bus/sockets.py), feeds decoded events to the engine, publishes
`snapshot.<service>` on every change and all of them at least once a second, sends its
own heartbeat, and answers requests (snapshot, refresh, export) on the ROUTER.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

import msgpack
import zmq

from bus.protocol import (MAX_EVENT_BYTES, SCHEMA_VERSION, SEPARATOR, Publisher, Rejection, RejectCounter, decode,
                          encode)
from bus.sockets import (Endpoints, close, drain, endpoint_in_use, new_context, pub_socket, router_socket,
                         sub_socket)
from bus.wake import StopEvent

from . import export as exporter
from .engine import Engine
from .settings import Settings, label
from .store import Store, StoreUnavailable
from .timeline import Timeline

log = logging.getLogger("aggregator")

HEARTBEAT_INTERVAL = 1.0
# The loop sleeps until its next due thing and wakes for nothing else: the heartbeat (once a
# second, with a tick of the engine and every service republished), the next probe-liveness
# deadline (the loop wakes at the moment a silent probe passes its 3 beats, so it shows unknown
# then, not a tick later), the next history flush and the next rejection summary.
# A probe shown dead that beats again is noticed by a tick; while any is dead, a tick follows
# events within RETICK rather than at the next heartbeat.
RETICK = 0.25
# A step of the engine's clock longer than this is unobserved time (engine.MAX_OBSERVED_STEP).
# The loop reads the clock at least every HEARTBEAT_INTERVAL; this is twice that. Below a
# probe's 3-beat deadline minus a beat, so a forward wall-clock step the timeline follows can
# never make a live probe look dead; a loop stalled longer than this on a loaded machine
# credits the stall unknown rather than guessing.
OBSERVED_STEP = 2.0
DRAIN_BUDGET = (5000, 0.05)  # events and seconds per loop turn, so requests are never starved
SERVE_BUDGET = 0.02  # seconds of request handling per loop turn, so events are never starved either
# Requests are work a sender controls, so the work and the memory they take are bounded
# per peer and in all. A client has one or two requests out at a time (the Clone client
# one snapshot, the CLI one export), so 8 waiting from one peer is already a flood; what
# is over a cap is refused at once (an error reply when the peer still reads, else
# nothing) and counted in the heartbeat's `bus.over_cap`.
MAX_PENDING_PER_PEER = 8
MAX_PENDING = 1024  # requests waiting, all peers together
MAX_PENDING_BYTES = 16 << 20  # their bytes, all peers together (one request may be up to 1 MiB)
# Replies waiting in libzmq for one peer that does not read. With ROUTER_MANDATORY a reply
# beyond it fails at once (counted), rather than queueing: 1000 24 h snapshot replies to a
# deaf client took the aggregator from 47 MB to 621 MB (issue 14).
ROUTER_SNDHWM = 8
ROUTER_RCVHWM = 1000
CAP_CHUNK_MIN = 64  # below this much room under max_services, events are checked one by one (_capped)
MAX_PROBES = 4096  # probe heartbeat sources remembered (src is sender-chosen; the oldest go first)
HISTORY_REUSE = 0.5  # seconds a built history may serve further snapshot replies (history is
                     # bucketed trend data clients re-fetch every few seconds; the live records
                     # in the same reply are never older than the last published update)


OVER_CAP_KINDS = ("services", "probes", "requests_per_peer", "requests_total", "malformed_requests",
                  "replies_unsent")
_OP = re.compile(r"[a-z_]{1,32}")
_OVER_CAP = Rejection("too_large", "over max_services")  # an event _capped refused: counted in over_cap only
# A request refused for being over a cap is unpacked for its id only up to this size, so
# a flood of big requests costs no decoding; one the decoder refused was within the caps
# and is unpacked again whatever its size (at most the socket's 1 MiB).
_CLAIM_LIMIT = 64 << 10


class AlreadyRunning(RuntimeError):
    pass


def _error_reply(frame: bytes, error: str, seq: int, instance: str, claim_limit: int = _CLAIM_LIMIT) -> bytes:
    """`reply.<op>` {ok: false, error, id, instance} for a request the decoder refused or that
    is over a cap: op and id are read leniently, as far as the frame allows."""
    head, _, payload = frame.partition(SEPARATOR)
    op = head[8:].decode("ascii", "replace") if head.startswith(b"request.") else ""
    rid = None
    if len(payload) <= claim_limit:
        try:
            env = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            body = env.get("body") if isinstance(env, dict) else None
            rid = body.get("id") if isinstance(body, dict) else None
        except Exception:
            rid = None
    if not (isinstance(rid, str) and len(rid) <= 200):
        rid = None
    return encode(f"reply.{op if _OP.fullmatch(op) else 'error'}", "aggregator", seq,
                  {"ok": False, "error": error[:500], "id": rid, "instance": instance})


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
        self.stop = stop or StopEvent()
        self.instance = uuid.uuid4().hex[:12]
        self.rejects = RejectCounter(every=self.settings.reject_log_interval)
        # What was refused for being over a cap (not malformed, just too much), by cap.
        self.over_cap: dict[str, int] = {k: 0 for k in OVER_CAP_KINDS}
        self._cap_logged: dict[str, float] = {}
        self.ready = threading.Event()
        self.metrics_port = self.settings.metrics_port if metrics_port is None else metrics_port
        self.store: Store | None = None
        # Requests waiting for their turn, per peer (ROUTER identity), served round robin so
        # one peer's flood never sits in front of another peer's request.
        self._pending: OrderedDict[bytes, deque[bytes]] = OrderedDict()
        self._pending_count = 0
        self._pending_bytes = 0
        self._histories: dict[tuple, tuple[float, bytes]] = {}  # (range, points) -> (built at, packed history)
        self._live: tuple[int, int, bytes] | None = None  # (publisher seq, state keys, packed entries but history)
        self.loop_errors = 0
        # When the loop next ticks the engine (monotonic; see _schedule): at once at start.
        self._next_tick = -math.inf
        self._last_tick = -math.inf
        self._any_dead = False
        self._scheduled_for: tuple[int, int] | None = None
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
        for name in self._over_service_cap(list(self.engine.services)):  # stored by an older, uncapped run
            del self.engine.services[name]
            self._forget(name)
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
            router = router_socket(ctx, self.endpoints.requests, ROUTER_SNDHWM, ROUTER_RCVHWM, mandatory=True)
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
        if isinstance(self.stop, StopEvent):  # a stop wakes the poll, which may wait a second
            poller.register(self.stop.wakeup.rx, zmq.POLLIN)
        next_beat = time.monotonic()
        next_flush = next_beat + self.settings.flush_interval
        next_summary = next_beat + self.settings.reject_log_interval
        self.ready.set()
        log.info("aggregator %s listening: events %s, snapshots %s, requests %s", self.instance,
                 self.endpoints.events, self.endpoints.snapshots, self.endpoints.requests)
        mono = time.monotonic
        try:
            while not self.stop.is_set():
                if self._pending:
                    wait = 0
                else:
                    due = min(next_beat, self._next_tick, next_flush, next_summary)
                    # ceil: pyzmq truncates a float timeout, and a wait cut short by that would
                    # wake once more for the remaining fraction of a millisecond.
                    wait = math.ceil(max(0.0, due - mono()) * 1000)
                ready = dict(poller.poll(wait))
                changed: set[str] = set()
                if events in ready:
                    changed |= self._ingest(drain(events, *DRAIN_BUDGET))
                if router in ready:
                    self._queue(router, drain(router, 1000, 0.01))
                if self._pending:
                    self._serve(router)
                now = mono()
                beat = now >= next_beat
                if beat or now >= self._next_tick:
                    changed |= self._guard(self._tick, set())
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
                if now >= next_summary:
                    next_summary = now + self.settings.reject_log_interval
                    if summary := self.rejects.summary():
                        log.warning("rejected frames since the last summary: %s", summary)
        finally:
            self._flush()
            if self.store is not None:
                self.store.close()
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
            close(events, pub, router)
            ctx.term()

    # -- when the engine next has work ---------------------------------------------------
    def _tick(self) -> set[str]:
        """engine.tick(), then the time of the next one that has something to do."""
        changed = self.engine.tick()
        self._last_tick = time.monotonic()
        self._schedule()
        return changed

    def _schedule(self) -> None:
        """Set _next_tick to the engine's next probe-liveness deadline (in monotonic time).
        Heartbeats only move a deadline later, so one computed here is never late for the
        probes it saw; a new probe or service makes _after_events compute it again. Beyond
        it, the heartbeat ticks anyway."""
        engine = self.engine
        first, self._any_dead = engine.liveness_due()
        now = time.monotonic()
        # Engine time to monotonic; a millisecond past the deadline, since a probe silent for
        # exactly its deadline is not dead yet (and a tick that finds it alive must not spin).
        self._next_tick = now + max(first - engine.now(), 0.0) + 0.001 if first < math.inf else math.inf
        self._scheduled_for = (len(engine.services), len(engine.probes))

    def _after_events(self) -> None:
        """Events changed what the schedule was computed from: a new service or probe has a
        deadline of its own, and a heartbeat may bring a dead probe back (noticed by a tick)."""
        engine = self.engine
        if self._scheduled_for != (len(engine.services), len(engine.probes)):
            self._guard(self._schedule, None)
        if self._any_dead:
            self._next_tick = min(self._next_tick, self._last_tick + RETICK)

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
        services = self.engine.services
        cap = self.settings.max_services
        # Decoded lazily, one frame at a time: each event's objects are freed as soon as the
        # engine has applied it, as in a plain recv-and-decode loop. Decoding the batch into
        # a list first kept thousands of bodies alive into the older GC generations, and the
        # collector's passes over them cost a third of the ingest time (bench/profile).
        #
        # The service cap is kept without a check per event: a chunk no longer than the room
        # left under the cap cannot pass it even if every event names a new service, so while
        # there is room, chunks go to the engine as they are. Only near the cap is each event
        # looked at (_capped), so a forged service is never created, not even for a moment
        # (10,000 created and then deleted took 600 MB the allocator kept).
        i = 0
        while i < len(frames):
            room = cap - len(services)
            if room >= CAP_CHUNK_MIN:
                chunk = frames[i:i + room]
                self.engine.ingest_batch(map(decode, chunk), changed, refused)
            else:
                chunk = frames[i:]
                self.engine.ingest_batch(self._capped(chunk), changed, refused)
            i += len(chunk)
        self.rejects.accepted += len(frames) - len(refused)
        if len(self.engine.probes) > MAX_PROBES:  # heartbeat sources: the longest silent go first
            probes = self.engine.probes
            for src in sorted(probes, key=lambda s: probes[s][0])[:len(probes) - MAX_PROBES]:
                del probes[src]
                self._count_over_cap("probes", f"a heartbeat from more than {MAX_PROBES} probe sources")
        self._after_events()
        for rejection in refused:
            if rejection is _OVER_CAP:
                continue
            if self.rejects.reject(rejection):
                log.warning("rejected a frame: %s (%s), claimed source %r; further ones of this kind are counted "
                            "and summed up every %g s, not logged one by one", rejection.kind, rejection.detail,
                            rejection.src, self.rejects.every)
        if self.engine.bad_events != bad and bad < 10:  # the first few are logged, all are counted
            log.warning("skipped an event the engine could not apply (%d so far): %s",
                        self.engine.bad_events, self.engine.last_bad_event)
        return changed

    def _capped(self, frames: list[bytes]):
        """Decoded events, but one that would create a service beyond max_services (status,
        timing or usage for a name not kept yet; configured names always pass) is refused:
        counted in over_cap.services and passed on as the falsy _OVER_CAP, which the engine
        skips. The count of accepted events stays exact."""
        services = self.engine.services
        configured = self.settings.configured
        cap = self.settings.max_services
        for frame in frames:
            msg = decode(frame)
            if msg and len(services) >= cap:
                name = "llm" if msg.topic == "llm.usage" else msg.body.get("service")
                if (isinstance(name, str) and name not in services and name not in configured
                        and msg.topic[:7] in ("status.", "timing.", "llm.usa")):
                    self._count_over_cap("services", f"an event for a new service {name!r} beyond max_services = {cap}")
                    msg = _OVER_CAP
            yield msg

    def _over_service_cap(self, candidates: list[str]) -> list[str]:
        """Which of `candidates` (newest last) go, so at most max_services are kept; a
        configured service is always kept (the configured ones are few and chosen by the user)."""
        excess = len(self.engine.services) - self.settings.max_services
        out = []
        for name in reversed(candidates):
            if excess <= len(out):
                break
            if name not in self.settings.configured:
                out.append(name)
        return out

    def _count_over_cap(self, cap: str, what: str) -> None:
        """Count one refusal; log the first of each cap, then at most once per reject_log_interval."""
        self.over_cap[cap] = self.over_cap.get(cap, 0) + 1
        now = time.monotonic()
        last = self._cap_logged.get(cap)
        if last is None or now - last >= self.settings.reject_log_interval:
            self._cap_logged[cap] = now
            log.warning("refused %s (%s refused so far: heartbeat bus.over_cap.%s)", what,
                        f"{self.over_cap[cap]:,}", cap)

    def _heartbeat(self) -> None:
        self.publisher.send("heartbeat.aggregator", {
            "interval": HEARTBEAT_INTERVAL, "instance": self.instance,
            "alerts": self.engine.active_alerts(), "bus": {**self.rejects.as_dict(), "over_cap": dict(self.over_cap)},
            "persistence": dict(self.engine.persistence)})

    # -- requests ---------------------------------------------------------------------
    def _queue(self, router, received: list[list[bytes]]) -> None:
        """Take what the ROUTER received into the per-peer queues, refusing what is over a cap."""
        pending = self._pending
        for frames in received:
            if len(frames) != 2:  # a REQ socket's [identity, b"", request]: not served (docs/protocol.md)
                self._count_over_cap("malformed_requests", "a request that is not [identity, one frame] "
                                     "(REQ sockets are not served; use a DEALER)")
                continue
            identity, frame = frames
            queue = pending.get(identity)
            if queue is not None and len(queue) >= MAX_PENDING_PER_PEER:
                self._refuse(router, identity, frame, "requests_per_peer",
                             f"{MAX_PENDING_PER_PEER} requests from this client are already waiting")
            elif self._pending_count >= MAX_PENDING or self._pending_bytes + len(frame) > MAX_PENDING_BYTES:
                self._refuse(router, identity, frame, "requests_total", "the aggregator has too many requests waiting")
            else:
                if queue is None:
                    queue = pending[identity] = deque()
                queue.append(frame)
                self._pending_count += 1
                self._pending_bytes += len(frame)

    def _refuse(self, router, identity: bytes, frame: bytes, cap: str, why: str) -> None:
        self._count_over_cap(cap, f"a request: {why}")
        self._send(router, identity, _error_reply(frame, f"busy: {why}; ask again once your replies arrive",
                                                  self.publisher.seq, self.instance))

    def _send(self, router, identity: bytes, reply: bytes) -> None:
        try:  # ROUTER_MANDATORY: a full queue (a peer not reading) or a peer gone fails at once
            router.send_multipart([identity, reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            self._count_over_cap("replies_unsent", "a reply: its client does not read its replies, or went away")

    def _serve(self, router) -> None:
        deadline = time.monotonic() + SERVE_BUDGET
        pending = self._pending
        while pending and time.monotonic() < deadline:
            identity, queue = next(iter(pending.items()))  # round robin: one request per peer in turn
            frame = queue.popleft()
            if queue:
                pending.move_to_end(identity)
            else:
                del pending[identity]
            self._pending_count -= 1
            self._pending_bytes -= len(frame)
            self._send(router, identity, self._answer(frame))

    def _answer(self, frame: bytes) -> bytes:
        """The reply to one request frame. Every request is answered, a refused one with
        {ok: false, error} (its id echoed when it can be read), so no client waits for nothing."""
        msg = decode(frame)
        if isinstance(msg, Rejection):
            if self.rejects.reject(msg):
                log.warning("refused a request: %s (%s), claimed source %r", msg.kind, msg.detail, msg.src)
            return _error_reply(frame, f"request refused ({msg.kind}): {msg.detail}", self.publisher.seq,
                                self.instance, MAX_EVENT_BYTES)
        if msg.kind != "request":
            return _error_reply(frame, f"{msg.topic!r} is not a request (topics here are request.<op>)",
                                self.publisher.seq, self.instance)
        op = msg.topic.split(".", 1)[1] if "." in msg.topic else ""
        rid = msg.body.get("id")
        try:
            if op == "snapshot":
                history_range, points = msg.body.get("range", "5m"), msg.body.get("points")
                known = self._ranges()
                if history_range not in known:
                    return self._reply(op, {"ok": False, "id": rid, "error": f"unknown range {str(history_range)[:40]!r} "
                                            f"(known: {', '.join(known)})"})
                if points is not None and (type(points) is not int or points < 1):
                    return self._reply(op, {"ok": False, "id": rid, "error": "points must be a whole number >= 1 "
                                            "(the most trailing history points wanted), or absent for all"})
                return self._snapshot_frame(history_range, rid, points)
            body = self.handle(op, msg.body)
            body.setdefault("id", rid)
            return self._reply(op, body)
        except Exception as exc:  # a bad request must never take the aggregator down
            log.exception("request %s failed", op)
            return self._reply(op, {"ok": False, "error": f"{op} failed: {exc.__class__.__name__}", "id": rid})

    def _ranges(self) -> list[str]:
        return [label(keep) for _, keep in self.settings.tiers]

    def _reply(self, op: str, body: dict[str, Any]) -> bytes:
        body["instance"] = self.instance
        # A reply takes the publisher's current seq and does not advance it (replies are not
        # on the update stream, so they must not make a gap there).
        return encode(f"reply.{op if _OP.fullmatch(op) else 'error'}", "aggregator", self.publisher.seq, body)

    def _snapshot_frame(self, history_range: str, rid: Any, points: int | None = None) -> bytes:
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
        key = (history_range, points)
        hist = self._histories.get(key)
        if hist is None or now - hist[0] > HISTORY_REUSE:
            hist = (now, packb("history") + packb(self.engine.history(history_range, points)))
            if len(self._histories) >= 8:  # ranges are few, `points` mostly one value; odd ones must not pile up
                self._histories.clear()
            self._histories[key] = hist
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
