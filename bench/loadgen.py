"""Load for the Blender figures, as a process of its own so it never shares a core's time
slices with the timer being measured.

    python -m bench.loadgen probes --events EP [--services 5] [--rate 1]
        Probe traffic into a real aggregator: per service and cycle, a heartbeat, two
        timings and a status whose details change, so the aggregator republishes.
    python -m bench.loadgen flood --snapshots EP --requests EP [--rate 10000]
        A flood straight at subscribers: binds the snapshot endpoint and publishes
        `snapshot.<service>` records (shaped by the real engine) at `rate` per second,
        plus the aggregator heartbeat, as an overloaded or misbehaving aggregator would.
        It answers snapshot requests with an empty state, so a Clone client becomes
        active and applies the flood instead of only buffering it while it syncs.

Stops when its stdin closes (bus/lifeline.py).
"""
from __future__ import annotations

import argparse
import threading
import time

import zmq

from bus.lifeline import watch_stdin
from bus.protocol import Publisher, Rejection, decode, encode
from bus.sockets import close, drain, new_context, pub_socket, router_socket

SERVICES = ("comfyui", "wan2gp", "rvc", "audioldm", "llm")
FLOOD_INSTANCE = "bench-flood"


def probes(events: str, services: int, rate: float, stop: threading.Event) -> None:
    from .fig_bus import _status_body

    ctx = new_context()
    sock = pub_socket(ctx, events)
    pubs = {s: Publisher(sock, f"probe.{s}") for s in SERVICES[:services]}
    cycle = 0
    try:
        while not stop.is_set():
            start = time.monotonic()
            for i, (svc, pub) in enumerate(pubs.items()):
                pub.send(f"heartbeat.{pub.src}", {"interval": 1.0 / rate, "services": [svc]})
                for endpoint, ms in (("/system_stats", 12.0 + cycle % 7), ("/queue", 8.0 + cycle % 5)):
                    pub.send(f"timing.{svc}", {"service": svc, "endpoint": endpoint, "duration_ms": ms, "ok": True,
                                               "error_kind": None})
                pub.send(f"status.{svc}", _status_body(svc, queue_depth=(cycle + i) % 4))
            cycle += 1
            stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - start)))
    finally:
        close(sock)
        ctx.term()


def _records() -> dict[str, dict]:
    """Real records: an engine fed a few minutes of traffic, so sizes and shapes are true."""
    from .fig_engine import Clock, fill, new_engine

    clock = Clock(time.time())
    engine = new_engine(clock)
    fill(engine, clock, list(SERVICES[:4]), 300, seed=5)
    return {s: engine.record(s) for s in SERVICES[:4]}


def _answer_snapshots(router, pub: Publisher) -> None:
    for frames in drain(router, 100, 0.001):
        if len(frames) != 2:
            continue
        msg = decode(frames[1])
        if isinstance(msg, Rejection) or msg.topic != "request.snapshot":
            continue
        body = {"ok": True, "id": msg.body.get("id"), "seq": pub.seq,
                "state": {"instance": FLOOD_INSTANCE, "services": {}, "alerts": []}}
        try:
            router.send_multipart([frames[0], encode("reply.snapshot", "aggregator", pub.seq, body)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass


def flood(snapshots: str, requests: str, rate: float, stop: threading.Event) -> None:
    records = _records()
    names = list(records)
    ctx = new_context()
    sock = pub_socket(ctx, snapshots, bind=True)
    router = router_socket(ctx, requests)
    pub = Publisher(sock, "aggregator")
    batch = max(1, int(rate / 100))  # send in 10 ms batches: smooth enough, cheap to pace
    sent = 0
    start = next_beat = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                pub.send("heartbeat.aggregator", {"interval": 1.0, "instance": FLOOD_INSTANCE, "alerts": [],
                                                  "bus": {}})
                next_beat = now + 1.0
            _answer_snapshots(router, pub)
            due = int((now - start) * rate) - sent
            for _ in range(min(due, batch * 5)):
                name = names[sent % len(names)]
                rec = records[name]
                rec["details"]["queue_depth"] = sent % 9  # every record differs from the last
                rec["last_check"] = time.time()
                pub.send(f"snapshot.{name}", rec)
                sent += 1
            stop.wait(0.01)
    finally:
        close(sock, router)
        ctx.term()
        # What the flood really reached, for the figure's line (a starved sender falls short).
        print(f"sent {sent} in {time.monotonic() - start:.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="load for the Blender bench figures")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("probes")
    p.add_argument("--events", required=True)
    p.add_argument("--services", type=int, default=5)
    p.add_argument("--rate", type=float, default=1.0)
    f = sub.add_parser("flood")
    f.add_argument("--snapshots", required=True)
    f.add_argument("--requests", required=True)
    f.add_argument("--rate", type=float, default=10_000)
    args = parser.parse_args()
    stop = threading.Event()
    watch_stdin(stop)
    try:
        if args.what == "probes":
            probes(args.events, args.services, args.rate, stop)
        else:
            flood(args.snapshots, args.requests, args.rate, stop)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
