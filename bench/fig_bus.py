"""Figures 1 and 2: aggregator ingest rate and bus latency, each against the raw pipe.

Both sides of each comparison run in the same bench run, interleaved (raw, aggregator,
raw, aggregator, ...), so a noisy neighbour on a shared machine hits both alike and the
ratio stays meaningful even when the absolute numbers move.
"""
from __future__ import annotations

import random
import sys
import time

import zmq

from bus.protocol import Publisher, Rejection, decode, encode
from bus.sockets import close, new_context, pub_socket, sub_socket

from .harness import Figure, Mode, quantile, repeat, summary
from .procs import Procs, free_endpoints

SERVICES = ("comfyui", "wan2gp", "rvc", "audioldm", "llm")


def _status_body(service: str, state: str = "connected", **details) -> dict:
    """A status body shaped like the ComfyUI probe's (the largest one on the bus)."""
    return {
        "service": service, "kind": service, "state": state, "url": "http://127.0.0.1:8188",
        "required": True, "version": "0.3.40", "capabilities": ["images", "workflows"], "error": "",
        "error_kind": "", "interval": 2.0, "timeout": 2.0,
        "details": {"python_version": "3.11.9", "pytorch_version": "2.5.1+cu124", "os": "posix",
                    "ram_total": 33_554_432_000, "ram_free": 20_000_000_000,
                    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090", "type": "cuda",
                                 "vram_total": 25_386_352_640, "vram_free": 23_000_000_000}],
                    "queue_running": 0, "queue_pending": 0, "queue_depth": 0, **details},
    }


def probe_traffic(n: int, seed: int = 1) -> list[bytes]:
    """n frames in the mix a probe sends per check: two timing events then one status, for
    five services in turn, stamped by the production Publisher."""
    rng = random.Random(seed)
    pubs = {s: Publisher(None, f"probe.{s}") for s in SERVICES}
    frames = []
    i = 0
    while len(frames) < n:
        svc = SERVICES[i % len(SERVICES)]
        pub = pubs[svc]
        for endpoint in ("/system_stats", "/queue"):
            frames.append(pub.frame(f"timing.{svc}", {
                "service": svc, "endpoint": endpoint, "duration_ms": round(rng.lognormvariate(3, 0.5), 3),
                "ok": True, "error_kind": None}))
        frames.append(pub.frame(f"status.{svc}", _status_body(svc, queue_depth=i % 3)))
        i += 1
    return frames[:n]


class MarkedSink:
    """Talks to a receiver (the aggregator or the raw pipe) through its real sockets and times
    how long it takes to get through a burst, using an end marker it echoes as a snapshot."""

    def __init__(self, procs: Procs) -> None:
        self.ctx = new_context()
        self.pub = pub_socket(self.ctx, procs.endpoints.events)
        # The sender must not drop: with no send high-water mark the burst queues here and
        # the receiver's own speed is what gets measured.
        self.pub.sndhwm = 0
        self.sub = sub_socket(self.ctx, procs.endpoints.snapshots, prefixes=("snapshot.bench-mark",))
        self.mark = 0
        self.procs = procs

    def _send_mark(self) -> int:
        self.mark += 1
        self.pub.send(encode("status.bench-mark", "bench", self.mark, _status_body("bench-mark", mark=self.mark)))
        return self.mark

    def _wait_mark(self, mark: int, timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.sub.poll(50):
                msg = decode(self.sub.recv())
                if not isinstance(msg, Rejection) and msg.body.get("details", {}).get("mark") == mark:
                    return True
        return False

    def sync(self, timeout: float = 20.0) -> None:
        """Resend a marker until one comes back: both connections are up and the receiver is idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._wait_mark(self._send_mark(), 0.3):
                return
            self.procs.check_alive()
        raise RuntimeError("the receiver never echoed a marker")

    def burst(self, frames: list[bytes]) -> float:
        """Send every frame, then a marker; return events per second until the marker is back."""
        self.sync()
        send = self.pub.send
        start = time.perf_counter()
        for f in frames:
            send(f)
        mark = self._send_mark()
        if not self._wait_mark(mark, 120.0):
            raise RuntimeError("the end marker never came back")
        return len(frames) / (time.perf_counter() - start)

    def close(self) -> None:
        close(self.pub, self.sub)
        self.ctx.term()


def measure_ingest(mode: Mode) -> Figure:
    fig = Figure("ingest", 1, "Aggregator ingest", target="ratio ≥ 0.5",
                 how=(f"{mode.ingest_events:,} probe-shaped events (2 timing : 1 status, 5 services) blasted into "
                      "`python -m aggregator run` and into a raw pyzmq SUB+msgpack-decode process on the same "
                      "sockets; rate = events ÷ time until an end marker comes back; runs interleaved"))
    frames = probe_traffic(mode.ingest_events)
    with Procs("ingest-agg") as agg_procs, Procs("ingest-raw") as raw_procs:
        agg_procs.aggregator()
        ep = raw_procs.endpoints
        raw_procs.start("-m", "bench.rawpipe", "--events", ep.events, "--snapshots", ep.snapshots, name="rawpipe")
        agg, raw = MarkedSink(agg_procs), MarkedSink(raw_procs)
        try:
            pairs = repeat(mode, lambda i: (raw.burst(frames), agg.burst(frames)))
        finally:
            agg.close()
            raw.close()
    raw_rates = [r for r, _ in pairs]
    agg_rates = [a for _, a in pairs]
    fig.metrics["events_per_s"] = summary(agg_rates, "events/s")
    fig.baseline["events_per_s"] = summary(raw_rates, "events/s")
    fig.ratio["ingest_vs_raw"] = summary([a / r for r, a in pairs], "×")
    ratio = fig.ratio["ingest_vs_raw"]["median"]
    fig.met = ratio >= 0.5
    fig.verdict = f"{fig.metrics['events_per_s']['median']:,.0f} events/s = {ratio:.2f}× raw"
    return fig


# -- figure 2 ---------------------------------------------------------------------------
def _aggregator_latencies(procs: Procs, samples: int, rng: random.Random) -> list[float]:
    """Publish a status change with the probes' Publisher, time until MonitorClient has it."""
    client = procs.client("bench-latency")
    ctx = new_context()
    pub = pub_socket(ctx, procs.endpoints.events)
    publisher = Publisher(pub, "probe.bench-latency")
    try:
        procs.wait_synced(client)
        out = []
        k = 0
        # Slow joiner: keep publishing until the client has seen our service once.
        deadline = time.monotonic() + 20
        while "bench-latency" not in client.services and time.monotonic() < deadline:
            publisher.send("status.bench-latency", _status_body("bench-latency", k=k))
            client.poll(timeout_ms=50)
        for _ in range(samples):
            k += 1
            time.sleep(rng.uniform(0.002, 0.012))  # unsynchronised with the aggregator's 0.1 s tick
            start = time.perf_counter()
            publisher.send("status.bench-latency", _status_body("bench-latency", k=k))
            while True:
                client.poll(timeout_ms=1000)
                rec = client.services.get("bench-latency")
                if rec and rec.get("details", {}).get("k") == k:
                    out.append((time.perf_counter() - start) * 1000)
                    break
                if time.perf_counter() - start > 5:
                    raise RuntimeError("a status change took over 5 s to reach the client")
        return out
    finally:
        client.close()
        close(pub)
        ctx.term()


def _raw_latencies(samples: int, rng: random.Random) -> list[float]:
    """The same frame over one raw PUB→SUB hop on loopback, received and decoded."""
    ep = free_endpoints()
    ctx = new_context()
    pub = pub_socket(ctx, ep.events, bind=True)
    sub = sub_socket(ctx, ep.events)
    publisher = Publisher(pub, "probe.bench-latency")
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    try:
        while not poller.poll(0):  # slow joiner
            publisher.send("status.bench-latency", _status_body("bench-latency", k=0))
            time.sleep(0.01)
        while poller.poll(50):
            sub.recv()
        out = []
        for k in range(1, samples + 1):
            time.sleep(rng.uniform(0.002, 0.012))
            start = time.perf_counter()
            publisher.send("status.bench-latency", _status_body("bench-latency", k=k))
            while True:
                poller.poll(1000)
                msg = decode(sub.recv())
                if msg and msg.body["details"]["k"] == k:
                    out.append((time.perf_counter() - start) * 1000)
                    break
        return out
    finally:
        close(pub, sub)
        ctx.term()


def measure_latency(mode: Mode) -> Figure:
    fig = Figure("bus_latency", 2, "Bus latency, probe publish → client has the snapshot",
                 target="p99 < 10 ms",
                 how=(f"{mode.latency_samples} status changes per run sent with the probes' Publisher to "
                      "`python -m aggregator run`, timed until MonitorClient.services shows them; baseline: "
                      "the same frame over one raw PUB→SUB hop; runs interleaved"))
    rng = random.Random(2)
    all_bus: list[float] = []
    all_raw: list[float] = []
    with Procs("latency") as procs:
        procs.aggregator()

        def once(i: int):
            raw = _raw_latencies(mode.latency_samples, rng)
            bus = _aggregator_latencies(procs, mode.latency_samples, rng)
            if i >= 0:
                all_bus.extend(bus)
                all_raw.extend(raw)
            return sorted(raw), sorted(bus)

        runs = repeat(mode, once)
    for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        fig.metrics[name] = summary([quantile(b, q) for _, b in runs], "ms")
        fig.baseline[name] = summary([quantile(r, q) for r, _ in runs], "ms")
        fig.ratio[name.replace("_ms", "_vs_raw")] = summary([quantile(b, q) / quantile(r, q) for r, b in runs], "×")
    p99 = fig.metrics["p99_ms"]["median"]
    fig.met = p99 < 10
    fig.verdict = (f"p50 {fig.metrics['p50_ms']['median']:.2f} ms, p99 {p99:.2f} ms "
                   f"(raw p99 {fig.baseline['p99_ms']['median']:.2f} ms)")
    fig.extra["samples_ms"] = {"bus": all_bus, "raw": all_raw}
    return fig


if __name__ == "__main__":  # quick manual check: python -m bench.fig_bus
    from .harness import MODES

    m = MODES[sys.argv[1] if len(sys.argv) > 1 else "tiny"]
    for f in (measure_ingest(m), measure_latency(m)):
        d = f.as_dict()
        d["extra"] = {}
        print(d)
