"""The aggregator process: the thin shell between the bus and the pure stats engine.

It binds three sockets (bus/sockets.py), feeds decoded events to the engine, publishes
`snapshot.<service>` on every change and all of them at least once a second, sends its
own heartbeat, and answers requests (snapshot, refresh, export) on the ROUTER.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import zmq

from bus.protocol import Publisher, Rejection, RejectCounter, decode, encode
from bus.sockets import Endpoints, close, drain, endpoint_in_use, new_context, pub_socket, router_socket, sub_socket

from .engine import Engine

log = logging.getLogger("aggregator")

HEARTBEAT_INTERVAL = 1.0
TICK = 0.1  # how often probe liveness is re-evaluated
DRAIN_BUDGET = (5000, 0.05)  # events and seconds per loop turn, so requests are never starved


class AlreadyRunning(RuntimeError):
    pass


class Aggregator:
    def __init__(self, endpoints: Endpoints, *, engine: Engine | None = None,
                 stop: threading.Event | None = None) -> None:
        self.endpoints = endpoints
        self.engine = engine or Engine(clock=time.time)
        self.stop = stop or threading.Event()
        self.instance = uuid.uuid4().hex[:12]
        self.rejects = RejectCounter()
        self.ready = threading.Event()

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
        poller = zmq.Poller()
        poller.register(events, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        next_tick = next_beat = time.monotonic()
        self.ready.set()
        log.info("aggregator %s listening: events %s, snapshots %s, requests %s", self.instance,
                 self.endpoints.events, self.endpoints.snapshots, self.endpoints.requests)
        try:
            while not self.stop.is_set():
                timeout = max(0.0, min(next_tick, next_beat) - time.monotonic())
                ready = dict(poller.poll(min(timeout, 0.2) * 1000))
                changed: set[str] = set()
                if events in ready:
                    changed |= self._ingest(drain(events, *DRAIN_BUDGET))
                if router in ready:
                    self._serve(router, drain(router, 100, 0.05))
                now = time.monotonic()
                if now >= next_tick:
                    changed |= self.engine.tick()
                    next_tick = now + TICK
                if now >= next_beat:
                    changed = set(self.engine.services)  # everything, at least once a second
                    self._heartbeat()
                    next_beat = now + HEARTBEAT_INTERVAL
                for name in changed:
                    self.publisher.send(f"snapshot.{name}", self.engine.record(name))
        finally:
            close(events, pub, router)
            ctx.term()

    def _ingest(self, frames: list[bytes]) -> set[str]:
        changed: set[str] = set()
        for frame in frames:
            msg = decode(frame)
            if isinstance(msg, Rejection):
                if self.rejects.reject(msg):
                    log.warning("rejected a frame from %s: %s (%s); further ones of this kind from this "
                                "source are counted, not logged", msg.src or "an unknown source", msg.kind, msg.detail)
                continue
            self.rejects.accepted += 1
            changed |= self.engine.ingest(msg)
        return changed

    def _heartbeat(self) -> None:
        state = self.engine.state()
        self.publisher.send("heartbeat.aggregator", {
            "interval": HEARTBEAT_INTERVAL, "instance": self.instance,
            "alerts": state.get("alerts", []), "bus": self.rejects.as_dict()})

    # -- requests ---------------------------------------------------------------------
    def _serve(self, router, requests: list[list[bytes]]) -> None:
        for frames in requests:
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
                body = self.handle(op, msg.body)
            except Exception as exc:  # a bad request must never take the aggregator down
                log.exception("request %s failed", op)
                body = {"ok": False, "error": f"{op} failed: {exc.__class__.__name__}"}
            body.setdefault("id", msg.body.get("id"))
            try:
                router.send_multipart([identity, encode(f"reply.{op or 'error'}", "aggregator",
                                                        self.publisher.seq, body)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away or is not reading; never block on it

    def handle(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        if op == "snapshot":
            state = self.engine.state(str(body.get("range", "5m")))
            state["instance"] = self.instance
            return {"ok": True, "seq": self.publisher.seq, "state": state}
        if op == "refresh":
            service = body.get("service")
            self.publisher.send("control.refresh", {"service": service} if isinstance(service, str) else {})
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r} (known: snapshot, refresh)"}
