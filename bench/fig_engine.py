"""Figures 6, 7 and 8: the stats engine's memory, snapshot cost and quantile accuracy.

The engine is pure (events and a clock in, records out), so these drive the real
`aggregator.engine.Engine` in-process with a fake clock: a day of history takes seconds
instead of a day. The events are the ones probes send, built as decoded `Message`s.
"""
from __future__ import annotations

import gc
import inspect
import math
import pickle
import random
import statistics
import time
import tracemalloc
from fractions import Fraction

from bus.protocol import Message

from .harness import Figure, Mode, NotBuilt, summary

WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}
CHECK_INTERVAL = 2.0  # the probes' default interval; each check sends 2 timings and a status


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def new_engine(clock: Clock):
    """The engine as the aggregator builds it, with default settings."""
    from aggregator.engine import Engine

    params = inspect.signature(Engine).parameters
    return Engine(clock=clock) if "clock" in params else Engine(clock)


def require_tiers() -> None:
    """Figures 6 and 8 measure retention tiers; the skeleton engine has none."""
    clock = Clock(1_000_000.0)
    engine = new_engine(clock)
    engine.ingest(Message("status.x", "probe.x", 1, clock.t, {"service": "x", "state": "connected"}))
    if "windows" not in engine.record("x"):
        raise NotBuilt("the engine has no retention tiers yet (record has no 'windows'; issue 4)")


class Feeder:
    """Sends one service's probe traffic into an engine, at probe rate, on the fake clock."""

    def __init__(self, engine, clock: Clock, service: str, rng: random.Random) -> None:
        self.engine, self.clock, self.service, self.rng = engine, clock, service, rng
        self.src = f"probe.{service}"
        self.seq = 0
        self.median_ms = rng.uniform(20, 200)

    def _send(self, topic: str, body: dict) -> None:
        self.seq += 1
        self.engine.ingest(Message(topic, self.src, self.seq, self.clock.t, body))

    def check(self, duration_ms: float | None = None) -> None:
        """One probe cycle: heartbeat, two timed requests, a status."""
        self._send(f"heartbeat.{self.src}", {"interval": CHECK_INTERVAL, "services": [self.service]})
        for endpoint in ("/system_stats", "/queue"):
            ms = duration_ms if duration_ms is not None else self.rng.lognormvariate(0, 0.6) * self.median_ms
            self._send(f"timing.{self.service}", {"service": self.service, "endpoint": endpoint,
                                                   "duration_ms": ms, "ok": True, "error_kind": None})
        self._send(f"status.{self.service}", {"service": self.service, "kind": "comfyui", "state": "connected",
                                              "url": "http://127.0.0.1:8188", "required": True, "version": "0.3.40",
                                              "capabilities": ["images"], "error": "", "error_kind": "",
                                              "details": {"queue_depth": self.seq % 4}, "interval": CHECK_INTERVAL,
                                              "timeout": 2.0})


def fill(engine, clock: Clock, services: list[str], seconds: float, seed: int) -> None:
    """`seconds` of history for every service at the default probe rate, ending at clock.t."""
    rng = random.Random(seed)
    feeders = [Feeder(engine, clock, s, rng) for s in services]
    end = clock.t
    t = end - seconds
    tick_every, next_tick = 60.0, t  # ticks only judge liveness and alerts; history is built by ingest
    while t < end:
        for i, f in enumerate(feeders):  # spread the services over the interval, as real probes are
            clock.t = t + CHECK_INTERVAL * i / len(feeders)
            f.check()
        t += CHECK_INTERVAL
        if t >= next_tick:
            clock.t = t
            engine.tick()
            next_tick = t + tick_every
    clock.t = end
    engine.tick()


def clone_services(engine, templates: list[str], total: int, blobs: dict[str, bytes] | None = None) -> list[str]:
    """Add copies of fed services until there are `total`. A pickle round trip allocates a
    completely independent object graph (unlike deepcopy, which shares bytes and floats),
    so the copies cost what fed services cost; measure_memory checks that on every run."""
    blobs = blobs or {s: pickle.dumps(engine.services[s]) for s in templates}
    names = list(templates)
    i = 0
    while len(names) < total:
        src = templates[i % len(templates)]
        name = f"svc{len(names):04d}"
        state = pickle.loads(blobs[src])
        state.name = name
        engine.services[name] = state
        names.append(name)
        i += 1
    return names


# -- figure 6 ---------------------------------------------------------------------------
def _traced(build) -> int:
    """Bytes still allocated after build() returns, as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = build()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del keep
    return held


def _fed_templates(hours: float, count: int, seed: int) -> tuple[dict[str, bytes], dict]:
    """Fill `count` services with `hours` of history (untraced, it is the slow part) and
    return them pickled, with the probe liveness table they came with."""
    clock = Clock(1_700_000_000.0)
    engine = new_engine(clock)
    names = [f"svc{i:04d}" for i in range(count)]
    fill(engine, clock, names, hours * 3600, seed)
    return {s: pickle.dumps(engine.services[s]) for s in names}, dict(engine.probes)


def _store(n: int, blobs: dict[str, bytes], probes: dict) -> object:
    """A real Engine holding n services built from the fed templates."""
    engine = new_engine(Clock(1_700_000_000.0 + 86400))
    engine.probes.update(probes)
    templates = list(blobs)
    for s in templates[:n]:
        engine.services[s] = pickle.loads(blobs[s])
    clone_services(engine, templates[:n], n, blobs)
    return engine


def measure_memory(mode: Mode) -> Figure:
    require_tiers()
    fed = 5
    fig = Figure("store_memory", 6, "Metric store memory, 24 h tiers full",
                 target="< 2 MB at 5 services; linear growth",
                 how=(f"tracemalloc of a real Engine holding {mode.store_hours:g} h of probe traffic per service "
                      f"(heartbeat + 2 timings + status every {CHECK_INTERVAL:g} s, fake clock); {fed} services "
                      "are fed, larger stores are independent copies of them (pickle round trip; checked "
                      "against a store fed event by event)"))
    # Feeding is the slow part and tracemalloc counts bytes, not time, so the templates are fed
    # once and each run rebuilds and measures every store from them.
    results: dict[int, list[float]] = {n: [] for n in mode.store_services}
    blobs, probes = _fed_templates(mode.store_hours, fed, 0)
    for _run in range(mode.runs):
        for n in mode.store_services:
            results[n].append(_traced(lambda: _store(n, blobs, probes)) / 1e6)
    # The copies' honesty check: one service fed event by event under tracemalloc, against
    # the same history rebuilt from its pickle.
    def fed_one():
        clock = Clock(1_700_000_000.0)
        engine = new_engine(clock)
        fill(engine, clock, ["svc0000"], mode.store_hours * 3600, 0)
        return engine

    direct = _traced(fed_one)
    one = {"svc0000": blobs["svc0000"]}
    copied = _traced(lambda: _store(1, one, probes))
    fig.extra["copy_vs_fed"] = copied / direct
    per_size = {}
    for n in mode.store_services:
        fig.metrics[f"mb_{n}_services"] = summary(results[n], "MB")
        per_size[n] = fig.metrics[f"mb_{n}_services"]["median"]
    sizes = sorted(per_size)
    per_service = {n: per_size[n] / n * 1000 for n in sizes}  # kB per service
    fig.extra["per_size_mb"] = per_size
    fig.extra["kb_per_service"] = per_service
    spread = max(per_service.values()) / min(per_service.values())
    fig.extra["per_service_spread"] = spread
    five = fig.metrics.get("mb_5_services", {}).get("median")
    fig.met = ((five is None or five < 2.0) and spread < 1.25) if mode.store_hours >= 24 else None
    fig.verdict = (", ".join(f"{per_size[n]:.2f} MB @ {n}" for n in sizes) +
                   f" ({min(per_service.values()):.0f}–{max(per_service.values()):.0f} kB/service; "
                   f"copies {copied / direct:.2f}× a fed store)")
    if mode.store_hours < 24:
        fig.verdict += f" [only {mode.store_hours:g} h of history in this mode]"
    return fig


# -- figure 7 ---------------------------------------------------------------------------
def measure_snapshot(mode: Mode) -> Figure:
    fig = Figure("snapshot_cost", 7, "Snapshot build cost per service",
                 target="< 50 µs per service, mean over a 10 s cycle (slot rebuilds included); flat per service",
                 how=("real Engine with N services each holding 1 h of probe traffic (fake clock; 5 fed, the rest "
                      "pickled copies of them); a whole 10 s cycle of once-a-second publishes, one new sample per "
                      "service before each, every publish timed (record() for every service ÷ N), so the publish "
                      "that rebuilds the 1 h/24 h windows at the 10 s slot boundary is counted, not skipped; judged "
                      "on the cycle's mean (what the aggregator really spends), median and max per publish reported; "
                      "the late-joiner reply (state('5m'), with history) timed once per cycle; "
                      "sizes interleaved in each run"))
    clock = Clock(1_700_000_000.0)
    engine = new_engine(clock)
    templates = [f"svc{i:04d}" for i in range(5)]
    fill(engine, clock, templates, 3600, seed=7)
    sizes = mode.snapshot_services
    everyone = clone_services(engine, templates, max(sizes)) if max(sizes) > len(templates) else templates
    full = dict(engine.services)
    cycle = max(1, round(next(iter(full.values())).series.refresh))  # publishes per window-refresh slot

    def fresh(names: list[str]) -> None:
        # A second passes and every service gets a new sample, as between two publishes.
        clock.t += 1.0
        for s in names:
            engine.ingest(Message(f"timing.{s}", "probe.bench", 1, clock.t, {
                "service": s, "endpoint": "/queue", "duration_ms": 12.5, "ok": True, "error_kind": None}))

    def timed(names: list[str], fn) -> float:
        fresh(names)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6 / len(names)

    def one_size(n: int) -> tuple[list[float], float]:
        names = everyone[:n]
        engine.services = {s: full[s] for s in names}  # exactly n services, same history each
        try:
            publishes = [timed(names, lambda: [engine.record(s) for s in names]) for _ in range(cycle)]
            return publishes, timed(names, lambda: engine.state("5m"))
        finally:
            engine.services = full

    # Sizes interleaved within every run, so a noisy neighbour hits all sizes alike.
    results: dict[int, list[tuple[list[float], float]]] = {n: [] for n in sizes}
    for run in range(-mode.warmup, mode.runs):
        for n in sizes:
            r = one_size(n)
            if run >= 0:
                results[n].append(r)
    per_state, per_record, worst_publish, per_cycle = {}, {}, {}, {}
    for n in sizes:
        runs = results[n]
        every = [p for publishes, _ in runs for p in publishes]
        fig.metrics[f"snapshot_us_per_service_{n}"] = summary(every, "µs")
        fig.metrics[f"cycle_mean_us_per_service_{n}"] = summary([statistics.fmean(p) for p, _ in runs], "µs")
        per_cycle[n] = fig.metrics[f"cycle_mean_us_per_service_{n}"]["median"]
        fig.metrics[f"late_joiner_us_per_service_{n}"] = summary([s for _, s in runs], "µs")
        per_state[n] = fig.metrics[f"late_joiner_us_per_service_{n}"]["median"]
        per_record[n] = fig.metrics[f"snapshot_us_per_service_{n}"]["median"]
        worst_publish[n] = fig.metrics[f"snapshot_us_per_service_{n}"]["max"]
    fig.extra["publishes_per_cycle"] = cycle
    fig.extra["snapshot_us_per_service"] = per_record
    fig.extra["snapshot_max_us_per_service"] = worst_publish
    fig.extra["cycle_mean_us_per_service"] = per_cycle
    fig.extra["late_joiner_us_per_service"] = per_state
    big = [per_record[n] for n in per_record if n >= 10] or list(per_record.values())
    flat = max(big) / min(big)
    fig.extra["flatness"] = flat
    fig.met = max(per_cycle.values()) < 50 and flat < 2.0
    fig.verdict = (", ".join(f"{per_cycle[n]:.1f} (median {per_record[n]:.1f}, max {worst_publish[n]:.1f}) µs @ {n}"
                             for n in sorted(per_record)) +
                   f" per service, mean over a {cycle} s cycle; flatness (largest ÷ smallest median"
                   f" per service from 10 services up) {flat:.2f}, target < 2; late-joiner reply with 5 m history " +
                   f"{min(per_state.values()):.0f}–{max(per_state.values()):.0f} µs per service")
    return fig


# -- figure 8 ---------------------------------------------------------------------------
def nearest_rank_quantile(sorted_values: list[float], q: float) -> float:
    """The exact answer the engine's quantiles estimate (docs/metrics.md): the sample at
    1-based rank ceil(q * n), at least 1, computed in exact decimal arithmetic."""
    n = len(sorted_values)
    return sorted_values[max(1, math.ceil(Fraction(str(q)) * n)) - 1]


def _accuracy_run(mode: Mode, seed: int) -> dict[str, float]:
    """Worst relative error per (window label, quantile) over services whose samples all lie
    inside that window, so the exact answer is known without guessing at window edges."""
    rng = random.Random(seed)
    clock = Clock(1_700_000_000.0)
    engine = new_engine(clock)
    end = clock.t
    # One service per tier, its samples spanning most of that tier's window.
    spans = {"q5m": 240.0, "q1h": 3000.0, "q24h": 82800.0}
    samples: dict[str, list[float]] = {}
    for name in spans:
        # A long-tailed mixture: a fast mode and a slow mode, like a backend that is sometimes busy.
        samples[name] = [rng.lognormvariate(3.5, 0.4) if rng.random() < 0.9 else rng.lognormvariate(6.5, 0.5)
                         for _ in range(mode.quantile_samples)]
    # Feed all three services in time order (the engine expects a monotonic clock).
    events = []
    for name, span in spans.items():
        n = len(samples[name])
        start = end - span - 5.0
        for i, v in enumerate(samples[name]):
            events.append((start + span * i / n, name, v))
    events.sort()
    feeders = {name: Feeder(engine, clock, name, rng) for name in spans}
    next_beat = events[0][0]
    for t, name, v in events:
        clock.t = t
        if t >= next_beat:  # keep every probe alive
            for fd in feeders.values():
                fd._send(f"heartbeat.{fd.src}", {"interval": CHECK_INTERVAL, "services": [fd.service]})
            engine.tick()
            next_beat = t + 1.0
        feeders[name]._send(f"timing.{name}", {"service": name, "endpoint": "/x", "duration_ms": v, "ok": True,
                                               "error_kind": None})
    clock.t = end
    for fd in feeders.values():
        fd._send(f"heartbeat.{fd.src}", {"interval": CHECK_INTERVAL, "services": [fd.service]})
    engine.tick()
    errors: dict[str, float] = {}
    for name, span in spans.items():
        exact = sorted(samples[name])
        windows = engine.record(name).get("windows") or {}
        for label, length in WINDOWS.items():
            if length < span + 10 or label not in windows:
                continue
            for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
                got = windows[label].get(key)
                want = nearest_rank_quantile(exact, q)
                err = abs(got - want) / want if got is not None else float("inf")
                k = f"{label}_{key}"
                errors[k] = max(errors.get(k, 0.0), err)
    return errors


def measure_accuracy(mode: Mode) -> Figure:
    require_tiers()
    fig = Figure("quantile_accuracy", 8, "Quantile accuracy per tier", target="relative error ≤ 1 %",
                 how=(f"{mode.quantile_samples:,} long-tailed latency samples per service fed to a real Engine, one "
                      "service spanning each tier's window; record()['windows'][5m|1h|24h] p50/p95/p99 against "
                      "the exact nearest-rank quantile (rank ceil(q·n)) of the same samples"))
    runs = [_accuracy_run(mode, seed) for seed in range(mode.warmup, mode.warmup + mode.runs)]
    keys = sorted(set().union(*runs))
    worst_per_run = []
    for k in keys:
        fig.metrics[f"{k}_rel_err_pct"] = summary([r[k] * 100 for r in runs if k in r], "%")
    for r in runs:
        worst_per_run.append(max(r.values()) * 100 if r else float("inf"))
    fig.metrics["worst_rel_err_pct"] = summary(worst_per_run, "%")
    worst = max(worst_per_run)
    fig.met = worst <= 1.0 + 1e-9
    fig.verdict = f"worst {worst:.3f} % over {len(keys)} tier×quantile checks"
    return fig
