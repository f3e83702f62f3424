"""Soak: N simulated services at 1 Hz against a real aggregator process, for a long time.

    python -m bench.soak                       # the full soak: 500 services, 10 minutes (`make soak`)
    python -m bench.soak --services 500 --duration 45 --warmup 15 --json out.json   # the test's variant

Each simulated service behaves like a probe: every second a status (state flips now and
then), a timing and a heartbeat, each from its own source with its own sequence numbers,
all through the real probe-side socket (XPUB + NODROP, so any high-water-mark drop is
counted). Measured:

- events sent, dropped at the sender, and accepted / rejected by the aggregator (its
  heartbeat carries the counters): "no dropped events" means accepted == sent;
- the aggregator's RSS every second (psutil); growth = the peak in the second half after
  warm-up over the peak in the first half (peaks, because RSS saw-tooths by a few MiB);
- snapshot latency: a client's `request.snapshot` round trip, once a second, including
  the reply's history for every service. Target: p95 <= 250 ms, i.e. ten times the
  engine's snapshot-build budget (50 us per service, issue 4) at 500 services, leaving
  room for the history and the transfer.

Prints a table and exits non-zero if a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zmq

from bus.lifeline import spawn, stop as stop_child
from bus.protocol import Publisher, decode, encode
from bus.sockets import Endpoints, close, dealer_socket, endpoint_in_use, new_context, pub_socket, sub_socket

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"rss_growth_pct": 5.0, "dropped": 0, "snapshot_p95_ms": 250.0}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(name: str, state: str, n: int) -> dict:
    return {"service": name, "kind": "sim", "state": state, "url": f"http://127.0.0.1:9/{name}", "required": False,
            "version": "1.0", "capabilities": ["sim"], "error": "" if state == "connected" else "simulated outage",
            "error_kind": "" if state == "connected" else "refused",
            "details": {"queue_depth": n % 7, "devices": [], "resources": None}, "interval": 1.0, "timeout": 1.0}


class Aggregator:
    def __init__(self, endpoints: Endpoints, data_dir: Path, log_path: Path, tiers: list[str] | None) -> None:
        config = data_dir / "config.toml"
        config.write_text(f"[aggregator]\ntiers = {json.dumps(tiers)}\n" if tiers else "")
        env = {**os.environ, "MD_HEALTH_DATA_DIR": str(data_dir / "data"), "MD_HEALTH_CONFIG": str(config)}
        self.log = open(log_path, "w")
        self.proc = spawn([sys.executable, "-m", "aggregator", "--events", endpoints.events, "--snapshots",
                           endpoints.snapshots, "--requests", endpoints.requests, "run"],
                          stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + 60
        while not endpoint_in_use(endpoints.requests, timeout=0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the aggregator did not start; see {log_path}")
            time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        stop_child(self.proc, grace=10)
        self.log.close()


def run(services: int = 500, duration: float = 600.0, warmup: float = 120.0, seed: int = 1,
        tiers: list[str] | None = None, progress=None) -> dict:
    """Run one soak; `tiers` (e.g. ["1s:10s", "5s:30s"]) shrinks the retention tiers so a
    short run reaches the steady state a long one reaches after its rings have filled."""
    rnd = random.Random(seed)
    ep = Endpoints.on_ports(_free_port(), _free_port(), _free_port())
    with tempfile.TemporaryDirectory(prefix="md-soak-") as tmp:
        agg = Aggregator(ep, Path(tmp), Path(tmp) / "aggregator.log", tiers)
        ctx = new_context()
        sock = pub_socket(ctx, ep.events)
        sub = sub_socket(ctx, ep.snapshots, prefixes=("heartbeat.aggregator",))
        dealer = dealer_socket(ctx, ep.requests)
        names = [f"sim{i:03d}" for i in range(services)]
        pubs = {n: Publisher(sock, f"probe.{n}") for n in names}
        states = {n: "connected" for n in names}
        sent = 0
        rss: list[tuple[float, int]] = []
        latencies: list[tuple[float, float]] = []
        reply_bytes = 0
        bus: dict = {}
        try:
            time.sleep(1.0)  # let the probe-side socket connect and subscribe before counting
            start = time.monotonic()
            next_second = start
            rid = 0
            while (now := time.monotonic()) < start + duration:
                # One second's worth of events, spread over the second in 10 slices.
                for slice_ in range(10):
                    for n in names[slice_::10]:
                        p = pubs[n]
                        if rnd.random() < 0.002:
                            states[n] = "disconnected" if states[n] == "connected" else "connected"
                        p.send(f"status.{n}", _status(n, states[n], sent))
                        p.send(f"timing.{n}", {"service": n, "endpoint": "/system_stats",
                                               "duration_ms": round(rnd.lognormvariate(3.0, 0.5), 3),
                                               "ok": states[n] == "connected",
                                               "error_kind": None if states[n] == "connected" else "refused"})
                        p.send(f"heartbeat.{p.src}", {"interval": 1.0, "services": [n], "dropped": p.dropped})
                        sent += 3
                    time.sleep(max(0.0, next_second + (slice_ + 1) * 0.1 - time.monotonic()))
                next_second += 1.0
                elapsed = time.monotonic() - start
                rss.append((elapsed, agg.rss()))
                # One snapshot round trip per second, as a late-joining panel would ask.
                rid += 1
                t0 = time.perf_counter()
                try:
                    dealer.send(encode("request.snapshot", "soak", 0, {"id": f"s{rid}", "range": "5m"}), zmq.NOBLOCK)
                    while dealer.poll(5000):
                        frame = dealer.recv()
                        reply = decode(frame, max_bytes=1 << 30)
                        if reply and reply.body.get("id") == f"s{rid}":
                            latencies.append((elapsed, (time.perf_counter() - t0) * 1000))
                            reply_bytes = len(frame)
                            break
                except zmq.Again:
                    pass
                while sub.poll(0):
                    msg = decode(sub.recv())
                    if msg and msg.topic == "heartbeat.aggregator":
                        bus = msg.body.get("bus", {})
                if progress and int(elapsed) % 30 == 0:
                    progress(f"{elapsed:5.0f} s  sent {sent:,}  accepted {bus.get('accepted', 0):,}  "
                             f"rss {rss[-1][1] / 2**20:.1f} MiB")
            # Let the aggregator finish what is queued, then read its final counters.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and bus.get("accepted", 0) < sent:
                if sub.poll(500):
                    msg = decode(sub.recv())
                    if msg and msg.topic == "heartbeat.aggregator":
                        bus = msg.body.get("bus", {})
            alive = agg.proc.poll() is None
        finally:
            close(sock, sub, dealer)
            ctx.term()
            agg.stop()

    dropped = sum(p.dropped for p in pubs.values())
    # Peaks, not means: RSS saw-tooths by several MiB as the allocator takes and returns
    # arenas, while a leak lifts the peaks. Compare the highest sample in the first half
    # after warm-up with the highest in the second half.
    after = [v for t, v in rss if t >= warmup]
    half = max(1, len(after) // 2)
    base, end = max(after[:half]), max(after[half:] or after)
    lat = [v for t, v in latencies if t >= warmup] or [v for _, v in latencies]
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    rejected = sum((bus.get("rejected") or {}).values())
    return {
        "services": services, "duration_s": duration, "warmup_s": warmup, "events_sent": sent,
        "events_per_s": round(sent / duration), "dropped_at_sender": dropped,
        "accepted": bus.get("accepted", 0), "rejected": rejected,
        "dropped": dropped + max(0, sent - bus.get("accepted", 0)),
        "rss_peak_first_half_mib": round(base / 2**20, 2), "rss_peak_second_half_mib": round(end / 2**20, 2),
        "rss_growth_pct": round((end / base - 1) * 100, 2),
        "snapshot_p50_ms": round(q[49], 1), "snapshot_p95_ms": round(q[94], 1), "snapshot_max_ms": round(max(lat), 1),
        "snapshots": len(lat), "snapshot_reply_mb": round(reply_bytes / 1e6, 2), "aggregator_alive": alive, "tiers": tiers or "default (1s:5m, 10s:1h, 1m:24h)",
    }


def verdict(r: dict) -> list[str]:
    """The targets a result misses (empty: all met)."""
    missed = []
    if r["rss_growth_pct"] >= TARGETS["rss_growth_pct"]:
        missed.append(f"RSS grew {r['rss_growth_pct']} % after warm-up (target < {TARGETS['rss_growth_pct']} %)")
    if r["dropped"] > TARGETS["dropped"] or r["rejected"]:
        missed.append(f"{r['dropped']} events dropped, {r['rejected']} rejected (target 0)")
    if r["snapshot_p95_ms"] > TARGETS["snapshot_p95_ms"]:
        missed.append(f"snapshot p95 {r['snapshot_p95_ms']} ms (target <= {TARGETS['snapshot_p95_ms']} ms)")
    if not r["aggregator_alive"]:
        missed.append("the aggregator died")
    return missed


def _record(r: dict, missed: list[str]) -> None:
    from tests.reliability import Measured

    Measured("bench/soak.py::make soak").record(
        "soak_full", section="Load and soak", order=20,
        case=f"Full soak (`make soak`): {r['services']} simulated services at 1 Hz for {r['duration_s'] / 60:g} min",
        required=f"RSS growth after warm-up < {TARGETS['rss_growth_pct']:g} %, no dropped events, "
                 f"snapshot p95 <= {TARGETS['snapshot_p95_ms']:g} ms",
        measured=("targets met: " if not missed else "MISSED (" + "; ".join(missed) + "): ")
        + f"{r['events_sent']:,} events, {r['accepted']:,} accepted, {r['dropped']} dropped, {r['rejected']} rejected; "
          f"peak RSS {r['rss_peak_first_half_mib']} → {r['rss_peak_second_half_mib']} MiB "
          f"({r['rss_growth_pct']:+.1f} %), first vs. second half after the {r['warmup_s']:g} s warm-up; snapshot (all services + 5 min history, {r['snapshot_reply_mb']} MB) "
          f"p50 {r['snapshot_p50_ms']:.0f} ms, p95 {r['snapshot_p95_ms']:.0f} ms, max {r['snapshot_max_ms']:.0f} ms",
        **{k: v for k, v in r.items() if isinstance(v, (int, float))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds excluded from RSS growth (default: half)")
    ap.add_argument("--tiers", nargs="+", help='retention tiers, e.g. 1s:10s 5s:30s (default: the configured ones)')
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--record", action="store_true", help="add the figures to docs/reliability.md")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else args.duration / 2
    print(f"soak: {args.services} services at 1 Hz for {args.duration:g} s (warm-up {warmup:g} s)", flush=True)
    r = run(args.services, args.duration, warmup, tiers=args.tiers, progress=lambda s: print(s, flush=True))
    width = max(map(len, r))
    for key, value in r.items():
        print(f"  {key:<{width}}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    missed = verdict(r)
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.record:
        _record(r, missed)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
