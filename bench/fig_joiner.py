"""Figure 12: the late joiner's reply (`request.snapshot` with its 5 m history) from a real
aggregator holding 10 and 500 services.

The aggregator is `python -m aggregator run`, started on a data directory that already
holds 5 minutes of probe traffic for every service (filled with the real Engine on a fake
clock ending at the wall clock's now, written with the real Store, restored by the
aggregator at start), so its 5 m history is full. A feeder process then sends every service
the traffic of a probe checking every 2 s (heartbeat, two timings, a status), so records and
open buckets change between replies as they do in use. Each sample is a new DEALER, as a client
that has just started: request sent -> reply received and decoded by bus.protocol.decode.
Samples are spaced further apart than the aggregator reuses a built history
(server.HISTORY_REUSE), so every reply builds its history afresh: the worst case a joiner
meets, not a burst sharing one build.

Baseline, same run: the very bytes of that reply sent over a bare ROUTER -> DEALER pair on
loopback and unpacked with plain msgpack, the floor any reply of that size costs.
"""
from __future__ import annotations

import pickle
import random
import threading
import time

import msgpack
import zmq

from bus.protocol import MAX_REPLY_BYTES, Rejection, decode, encode
from bus.sockets import close, dealer_socket, new_context

from .fig_engine import Clock, clone_services, fill, new_engine
from .harness import Figure, Mode, quantile, summary
from .procs import Procs, free_endpoints

SIZES = (10, 500)
TINY_SIZES = (10, 50)  # the smoke test's mode proves the path runs; it judges nothing
HISTORY_S = 300.0  # the default range, 5 m at 1 s
TARGET_MS = 250.0
SPACING_S = (0.6, 0.8)  # between samples: longer than server.HISTORY_REUSE (0.5 s)
CHECK_EVERY = 2.0  # the feeder's probe interval per service
CONFIG = "[aggregator]\nmax_services = 1000\n"  # the default cap (256) is below the larger size


def _samples(mode: Mode) -> int:
    return max(3, min(20, mode.latency_samples // 5))


def _fill_data_dir(procs: Procs, n: int, templates_blob: dict[str, bytes]) -> None:
    """n services with a full 5 m history, ending now, in the aggregator's data directory."""
    from aggregator.store import Store

    clock = Clock(time.time())
    engine = new_engine(clock)
    names = list(templates_blob)[:n]
    for s in names:
        engine.services[s] = pickle.loads(templates_blob[s])
    clone_services(engine, names, n, templates_blob)
    # The templates were filled on a clock ending at `end`; the copies keep their times, so
    # the engine's clock reads that end (rows_to_persist credits up to "now").
    clock.t = max(svc.series.credited for svc in engine.services.values())
    store = Store(procs.dir / "data")
    try:
        store.flush(engine)
    finally:
        store.close()


def _templates(end: float) -> dict[str, bytes]:
    clock = Clock(end)
    engine = new_engine(clock)
    names = [f"svc{i:04d}" for i in range(5)]
    fill(engine, clock, names, HISTORY_S + 5, seed=12)
    return {s: pickle.dumps(engine.services[s]) for s in names}


def _ask(ctx: zmq.Context, endpoint: str, timeout: float = 30.0) -> tuple[float, bytes]:
    """One late joiner: (ms from request sent to reply decoded, the reply's bytes)."""
    sock = dealer_socket(ctx, endpoint)
    try:
        deadline = time.monotonic() + timeout
        while not sock.poll(10, zmq.POLLOUT):  # connected (IMMEDIATE: a send before that fails)
            if time.monotonic() > deadline:
                raise RuntimeError("the aggregator's request socket never connected")
        frame = encode("request.snapshot", "bench-joiner", 0, {"id": "j", "range": "5m"})
        start = time.perf_counter()
        sock.send(frame)
        if not sock.poll(int(timeout * 1000)):
            raise RuntimeError(f"no snapshot reply within {timeout:g} s")
        reply = sock.recv()
        msg = decode(reply, max_bytes=MAX_REPLY_BYTES)
        ms = (time.perf_counter() - start) * 1000
        if isinstance(msg, Rejection) or not msg.body.get("ok"):
            raise RuntimeError(f"bad snapshot reply: {msg}")
        return ms, reply
    finally:
        close(sock)


class RawPair:
    """A bare ROUTER (in a thread) that answers every request with fixed bytes."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.endpoint = free_endpoints().requests
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(self.endpoint)
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        self.dealer.connect(self.endpoint)
        self.reply = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.router.poll(50):
                ident, _ = self.router.recv_multipart()
                self.router.send_multipart([ident, self.reply])

    def round_trip(self, reply: bytes) -> float:
        self.reply = reply
        start = time.perf_counter()
        self.dealer.send(b"request.snapshot\x00")
        if not self.dealer.poll(30_000):
            raise RuntimeError("the raw pair did not answer")
        frame = self.dealer.recv()
        msgpack.unpackb(frame.partition(b"\x00")[2], raw=False)
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        close(self.router, self.dealer)


def measure_joiner(mode: Mode) -> Figure:
    samples = _samples(mode)
    sizes = TINY_SIZES if mode.name == "tiny" else SIZES
    fig = Figure("joiner_reply", 12, "Late-joiner reply with history, 10 and 500 services",
                 target=f"p95 ≤ {TARGET_MS:g} ms at 500 services",
                 how=(f"`python -m aggregator run` restored from a data dir holding {HISTORY_S / 60:g} min of probe "
                      "traffic for N services (real Engine on a fake clock ending now, real Store), then fed live "
                      f"probe traffic for every service (a check every {CHECK_EVERY:g} s) by a child; each sample a "
                      "new DEALER: request.snapshot (range 5m) sent → reply decoded by bus.protocol.decode; "
                      f"{samples} samples per run per size, {SPACING_S[0]:g}–{SPACING_S[1]:g} s apart so no reply "
                      "reuses a built history; p50/p95 per run; baseline: the same reply bytes over a bare "
                      "ROUTER→DEALER pair + msgpack.unpackb; sizes interleaved"))
    rng = random.Random(12)
    blobs = _templates(time.time())
    ctx = new_context()
    procs_by_n: dict[int, Procs] = {}
    raw = RawPair(ctx)
    try:
        for n in sizes:
            procs = procs_by_n[n] = Procs(f"joiner-{n}", config=CONFIG).__enter__()
            _fill_data_dir(procs, n, blobs)
            procs.aggregator()
            procs.start("-m", "bench.fig_joiner", "feed", str(n), name="feeder")
        for n, procs in procs_by_n.items():
            client = procs.client(f"bench-joiner-{n}")
            try:
                procs.wait_synced(client, timeout=120.0)
                if len(client.services) != n:
                    raise RuntimeError(f"the aggregator restored {len(client.services)} services, not {n}")
                deadline = time.monotonic() + 60.0  # the feeder's traffic arrives: every service connected
                while sum(r.get("state") == "connected" for r in client.services.values()) < n:
                    client.poll(timeout_ms=100)
                    procs.check_alive()
                    if time.monotonic() > deadline:
                        raise RuntimeError("the feeder's services did not all turn connected within 60 s")
            finally:
                client.close()
        per_run: dict[int, list[tuple[list[float], list[float]]]] = {n: [] for n in sizes}
        sizes_bytes: dict[int, int] = {}
        for run in range(-mode.warmup, mode.runs):
            for n in sizes:
                procs = procs_by_n[n]
                got, floor = [], []
                for _ in range(samples):
                    time.sleep(rng.uniform(*SPACING_S))
                    ms, reply = _ask(ctx, procs.endpoints.requests)
                    got.append(ms)
                    floor.append(raw.round_trip(reply))
                    sizes_bytes[n] = len(reply)
                procs.check_alive()
                if run >= 0:
                    per_run[n].append((sorted(got), sorted(floor)))
    finally:
        raw.close()
        for procs in procs_by_n.values():
            procs.__exit__(None, None, None)
        ctx.term()
    for n in sizes:
        runs = per_run[n]
        for q, name in ((0.5, "p50"), (0.95, "p95")):
            fig.metrics[f"{name}_ms_{n}"] = summary([quantile(g, q) for g, _ in runs], "ms")
            fig.baseline[f"{name}_ms_{n}"] = summary([quantile(f, q) for _, f in runs], "ms")
            fig.ratio[f"{name}_vs_raw_{n}"] = summary([quantile(g, q) / quantile(f, q) for g, f in runs], "×")
        fig.metrics[f"reply_bytes_{n}"] = summary([float(sizes_bytes[n])], "bytes")
        pooled = sorted(x for g, _ in runs for x in g)
        fig.extra[f"pooled_p95_ms_{n}"] = quantile(pooled, 0.95)
        fig.extra[f"samples_ms_{n}"] = pooled
    judged = SIZES[-1]
    fig.met = fig.metrics[f"p95_ms_{judged}"]["median"] <= TARGET_MS if judged in sizes else None
    fig.verdict = "; ".join(
        f"{n}: p50 {fig.metrics[f'p50_ms_{n}']['median']:.1f} ms, p95 {fig.metrics[f'p95_ms_{n}']['median']:.1f} ms, "
        f"{sizes_bytes[n] / 1e6:.2f} MB (raw p95 {fig.baseline[f'p95_ms_{n}']['median']:.1f} ms)" for n in sizes)
    return fig


def feed(n: int) -> None:
    """The feeder child: probe traffic for svc0000..svc<n-1> on MD_HEALTH_EVENTS, spread over
    each CHECK_EVERY, until the parent closes our stdin."""
    from bus.lifeline import watch_stdin
    from bus.protocol import Publisher
    from bus.sockets import Endpoints, pub_socket

    stop = threading.Event()
    watch_stdin(stop)
    ctx = new_context()
    sock = pub_socket(ctx, Endpoints.from_env().events)
    pubs = [Publisher(sock, f"probe.svc{i:04d}") for i in range(n)]
    rng = random.Random(n)
    try:
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            svc = f"svc{i % n:04d}"
            pub = pubs[i % n]
            pub.send(f"heartbeat.{pub.src}", {"interval": CHECK_EVERY, "services": [svc]})
            for endpoint in ("/system_stats", "/queue"):
                pub.send(f"timing.{svc}", {"service": svc, "endpoint": endpoint,
                                           "duration_ms": round(rng.lognormvariate(3.5, 0.5), 3), "ok": True})
            pub.send(f"status.{svc}", {"service": svc, "kind": "comfyui", "state": "connected",
                                       "url": "http://127.0.0.1:8188", "required": False, "version": "0.3.64",
                                       "details": {"queue_depth": i % 3}, "interval": CHECK_EVERY,
                                       "timeout": 2.0})
            i += 1
            next_at += CHECK_EVERY / n
            wait = next_at - time.monotonic()
            if wait > 0:
                stop.wait(wait)
    finally:
        close(sock)
        ctx.term()


if __name__ == "__main__":  # python -m bench.fig_joiner [quick|tiny|full]; `feed N` is the feeder child
    import sys

    if sys.argv[1:2] == ["feed"]:
        feed(int(sys.argv[2]))
        sys.exit(0)
    from .harness import MODES

    f = measure_joiner(MODES[sys.argv[1] if len(sys.argv) > 1 else "tiny"])
    d = f.as_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if not k.startswith("samples")}
    print(d)
