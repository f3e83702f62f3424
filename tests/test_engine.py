"""The stats engine on a fake clock: percentiles, tiers, uptime, usage and cost, exactly."""
from __future__ import annotations

import copy
import math
import random

import pytest

from aggregator import sketch
from aggregator.engine import Engine
from aggregator.settings import Settings
from bus.protocol import Message

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


HISTORY_COLUMNS = ("p50_ms", "p95_ms", "success_rate", "up_ratio")  # contract C4


def msg(topic: str, body: dict, src: str = "probe.x") -> Message:
    return Message(topic, src, 1, 0.0, body)


def timing(engine, service: str, ms: float, ok: bool = True, kind: str = "") -> None:
    engine.ingest(msg(f"timing.{service}", {"service": service, "endpoint": "/", "duration_ms": ms, "ok": ok,
                                            "error_kind": kind}))


def status(engine, service: str, state: str, src: str = "probe.x", **details) -> set:
    return engine.ingest(msg(f"status.{service}", {"service": service, "state": state, "details": details}, src))


def beat(engine, src: str = "probe.x", interval: float = 1.0, services=("x",)) -> None:
    engine.ingest(msg(f"heartbeat.{src}", {"interval": interval, "services": list(services)}, src))


def exact(values, q):
    """Nearest rank (contract 4): the sorted values' value at 1-based rank ceil(q * n)."""
    v = sorted(values)
    return v[max(1, math.ceil(round(q * len(v), 9))) - 1]


def test_percentiles_in_every_tier_are_within_one_percent():
    clock = Clock()
    engine = Engine(clock)
    rng = random.Random(4)
    values = []
    # 2 h of traffic, 2 timings every 2 s, heavy-tailed like real latencies
    for i in range(3600):
        for _ in range(2):
            v = rng.lognormvariate(4.5, 0.8)
            values.append((clock.t, v))
            timing(engine, "x", v)
        clock.t += 2.0
        engine.tick()
    record = engine.record("x")
    for window in ("5m", "1h", "24h"):
        w = record["windows"][window]
        # each window holds whole buckets: take exactly the values the window's count says
        inside = [v for _, v in values][-w["count"]:]
        for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            want = exact(inside, q)
            assert abs(w[key] - want) / want <= 0.01, (window, key, w[key], want)
        assert w["min_ms"] == pytest.approx(min(inside), abs=1e-3)  # shown to the microsecond
        assert w["max_ms"] == pytest.approx(max(inside), rel=1e-6, abs=1e-3)
        assert w["avg_ms"] == pytest.approx(sum(inside) / len(inside), rel=1e-9)
    assert record["windows"]["5m"]["count"] == pytest.approx(300, abs=2)  # 150 checks x 2, +- edges
    assert record["windows"]["1h"]["count"] == pytest.approx(3600, abs=12)
    assert record["windows"]["24h"]["count"] == 7200
    assert record["stats"]["p95_ms"] == record["windows"]["5m"]["p95_ms"]


def test_sketch_matches_the_ddsketch_package_and_packs_losslessly():
    rng = random.Random(1)
    bins: dict[int, int] = {}
    values = [rng.expovariate(1 / 300) for _ in range(5000)] + [0.0, 0.0]
    for v in values:
        k = sketch.key(v)
        bins[k] = bins.get(k, 0) + 1
    real = sketch.to_ddsketch(bins)
    ours = sketch.quantiles(bins, (0.0, 0.5, 0.95, 0.99, 1.0))
    theirs = [real.get_quantile_value(q) for q in (0.0, 0.5, 0.95, 0.99, 1.0)]
    # Same bins; the package ranks by q * (n - 1), we by nearest rank (contract 4): at most
    # one bin apart (bins are 2 % wide), the same at both ends.
    assert ours == pytest.approx(theirs, rel=0.021)
    assert (ours[0], ours[-1]) == (theirs[0], theirs[-1])
    assert dict(sketch.unpack(sketch.pack(bins))) == bins
    assert ours[0] == 0.0  # zeros read back as zero, not as the smallest bin


def test_roll_up_and_expiry_across_tiers():
    clock = Clock()
    engine = Engine(clock, Settings(tiers=[(1, 5), (5, 20), (20, 60)]))  # small tiers, same code
    timing(engine, "x", 100.0)
    clock.t += 1
    timing(engine, "x", 200.0)
    engine.tick()
    w = engine.record("x")["windows"]
    assert [w[k]["count"] for k in ("5s", "20s", "1m")] == [2, 1, 1]  # coarser tiers: once the 1 s bucket closes
    clock.t += 1
    engine.tick()
    w = engine.record("x")["windows"]
    assert [w[k]["count"] for k in ("5s", "20s", "1m")] == [2, 2, 2]
    assert w["1m"]["max_ms"] == 200.0
    clock.t += 6  # past the 5 s tier
    engine.tick()
    w = engine.record("x")["windows"]
    assert w["5s"]["count"] == 0 and w["5s"]["p95_ms"] is None
    assert w["20s"]["count"] == 2 and w["1m"]["count"] == 2
    clock.t += 30
    engine.tick()
    w = engine.record("x")["windows"]
    assert w["20s"]["count"] == 0 and w["1m"]["count"] == 2
    clock.t += 60
    engine.tick()
    assert engine.record("x")["windows"]["1m"]["count"] == 0
    clock.t += 10 * 86400  # a long gap (suspend, fake clock) is not walked second by second
    engine.tick()
    assert engine.record("x")["windows"]["1m"]["count"] == 0
    timing(engine, "x", 50.0)
    assert engine.record("x")["stats"]["max_ms"] == 50.0


def test_uptime_is_time_weighted_and_unknown_spans_are_never_up():
    clock = Clock()
    engine = Engine(clock)

    def run(seconds):
        for _ in range(int(seconds)):
            clock.t += 1
            beat(engine)
            engine.tick()

    beat(engine)
    status(engine, "x", "connected")
    run(60)                       # 60 s up
    status(engine, "x", "disconnected")
    run(20)                       # 20 s down
    status(engine, "x", "connected")
    run(20)                       # 20 s up
    for _ in range(40):           # probe killed: unknown from 3 missed beats on
        clock.t += 1
        engine.tick()
    r = engine.record("x")
    assert r["state"] == "unknown" and r["probe_alive"] is False
    w = r["windows"]["5m"]
    assert w["up_s"] == pytest.approx(83.0)        # 60 + 20 + 3 beats of grace
    assert w["down_s"] == pytest.approx(20.0)
    assert w["unknown_s"] == pytest.approx(37.0)
    assert r["uptime"]["5m"] == pytest.approx(83 / 103)  # unknown is not in the ratio ...
    assert w["unknown_ratio"] == pytest.approx(37 / 140)   # ... it is reported on its own
    assert r["uptime"]["1h"] == pytest.approx(83 / 103) and r["uptime"]["24h"] == pytest.approx(83 / 103)
    beat(engine)  # the probe is back, its last report stands again
    engine.tick()
    assert engine.record("x")["state"] == "connected"
    clock.t += 10  # silent again, noticed late (one tick after 10 s): unknown still starts at 3 s
    engine.tick()
    w = engine.record("x")["windows"]["5m"]
    assert w["up_s"] == pytest.approx(86.0) and w["unknown_s"] == pytest.approx(44.0)


def test_figures_errors_rpm_queue_and_job_time():
    clock = Clock()
    engine = Engine(clock)
    beat(engine)
    status(engine, "x", "connected", queue_depth=4, job_time_ms=1500.0)
    for i in range(60):
        timing(engine, "x", 10.0 + i)
        if i % 10 == 0:
            timing(engine, "x", 0.0, ok=False, kind="timeout")
        if i == 30:
            timing(engine, "x", 0.0, ok=False, kind="http_500")
        clock.t += 1
        beat(engine)
        engine.tick()
    status(engine, "x", "connected", queue_depth=2, job_time_ms=1500.0)  # same job reported again
    status(engine, "x", "connected", queue_depth=2, job_time_ms=3000.0)
    r = engine.record("x")
    w = r["windows"]["5m"]
    assert w["count"] == 67 and w["success_rate"] == pytest.approx(60 / 67)
    assert w["errors_by_kind"] == {"timeout": 6, "http_500": 1}
    assert w["rpm"] == pytest.approx(67.0)
    assert r["queue"] == {"current": 2, "peak": 4.0}
    # nearest rank (contract 4): p50 of two is the first, p95 the second
    assert r["job_time"] == {"p50_ms": 1500.0, "p95_ms": 3000.0, "count": 2}
    assert r["since_change_s"] == pytest.approx(60.0)
    assert r["stats"]["min_ms"] == 10.0 and r["stats"]["max_ms"] == 69.0


def test_llm_usage_tokens_latency_and_cost():
    clock = Clock()
    settings = Settings(prices={"gpt-4o": {"input": 2.5, "output": 10.0},
                                "openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}})
    engine = Engine(clock, settings)
    status(engine, "llm", "connected", providers={"openai": {"configured": True, "state": "valid"}})
    usage = [("gpt-4o-2024-08-06", 1000, 200, 800.0, "openai"), ("gpt-4o", 3000, 100, 1200.0, None),
             ("gpt-4o-mini", 10_000, 5_000, 300.0, "openai"), ("llama3", 500, 500, 90.0, "ollama")]
    for model, tin, tout, lat, provider in usage:
        body = {"model": model, "tokens_in": tin, "tokens_out": tout, "latency_ms": lat}
        if provider:
            body["provider"] = provider
        assert engine.ingest(msg("llm.usage", body, "addon")) == {"llm"}
    u = engine.record("llm")["usage"]
    m = u["by_model"]
    assert m["gpt-4o-2024-08-06"]["cost_usd"] == pytest.approx((1000 * 2.5 + 200 * 10) / 1e6)  # prefix match
    assert m["gpt-4o"]["cost_usd"] == pytest.approx((3000 * 2.5 + 100 * 10) / 1e6)
    assert m["gpt-4o-mini"]["cost_usd"] == pytest.approx((10_000 * 0.15 + 5_000 * 0.6) / 1e6)  # provider/model
    assert m["llama3"]["cost_usd"] is None and u["unpriced_models"] == ["llama3"]  # unknown, never 0
    assert u["total_tokens"] == 1200 + 3100 + 15_000 + 1000
    assert u["cost_usd"] == pytest.approx(sum(m[k]["cost_usd"] for k in m if m[k]["cost_usd"] is not None))
    assert m["gpt-4o"]["latency_p95_ms"] == pytest.approx(1200.0, rel=0.01)
    assert m["gpt-4o"]["requests"] == 1


def test_snapshot_state_history_and_cache():
    clock = Clock()
    engine = Engine(clock)
    beat(engine)
    status(engine, "x", "connected")
    for _ in range(30):
        timing(engine, "x", 100.0)
        clock.t += 1
        beat(engine)
        engine.tick()
    state = engine.state("5m")
    h = state["history"]
    assert h["range"] == "5m" and h["step_s"] == 1.0
    cols = h["services"]["x"]
    assert set(cols) == {"t0", "p50_ms", "p95_ms", "success_rate", "up_ratio"}
    assert all(len(cols[c]) == 31 for c in HISTORY_COLUMNS)
    assert cols["p95_ms"][-2] == pytest.approx(100.0, rel=0.01) and cols["up_ratio"][-2] == 1.0
    for _ in range(400):  # the history is kept up to date incrementally: same as built afresh
        timing(engine, "x", 100.0 + clock.t % 7)
        clock.t += 1
        beat(engine)
        engine.tick()
        if clock.t % 37 == 0:
            engine.state("5m")
    kept = engine.history("5m")["services"]["x"]
    engine.services["x"].history_cache.clear()
    engine.services["x"].history_out.clear()
    assert engine.history("5m")["services"]["x"] == kept and len(kept["p50_ms"]) == 301
    assert engine.state("1h")["history"]["step_s"] == 10.0
    assert engine.state("24h")["history"]["step_s"] == 60.0
    assert set(state["services"]["x"]["uptime"]) == {"5m", "1h", "24h"}
    # a second build with nothing new returns equal figures (from the cache) ...
    assert engine.record("x") == engine.record("x")
    # ... and a new event shows at once in the 5 m figures
    timing(engine, "x", 500.0)
    assert engine.record("x")["stats"]["max_ms"] == 500.0


def test_history_is_t0_plus_k_steps_with_gaps_as_none_and_a_points_limit():
    """Contract C4: point k of every column is the bucket starting at t0 + k * step_s; a
    bucket without requests is None, never left out; `points` keeps the trailing ones."""
    clock = Clock(1000.0)
    engine = Engine(clock)
    beat(engine)
    status(engine, "x", "connected")
    sent = {}  # bucket start -> the duration sent in it
    for i in range(120):
        if i % 3 == 0:  # two of every three seconds have no request
            sent[clock.t] = 20.0 + i
            timing(engine, "x", sent[clock.t])
        clock.t += 1
        beat(engine)
        engine.tick()
    for rng, step in (("5m", 1.0), ("1h", 10.0)):
        h = engine.history(rng)
        assert h["range"] == rng and h["step_s"] == step
        entry = h["services"]["x"]
        assert set(entry) == {"t0", *HISTORY_COLUMNS}
        n = len(entry["p50_ms"])
        assert all(len(entry[c]) == n for c in HISTORY_COLUMNS)
        assert entry["t0"] == 1000.0 and n == int((clock.t - 1000.0) // step) + 1  # the open one is last
    entry = engine.history("5m")["services"]["x"]
    for k, p50 in enumerate(entry["p50_ms"]):
        start = entry["t0"] + k * 1.0
        if start in sent:
            assert p50 == pytest.approx(sent[start], rel=0.01) and entry["success_rate"][k] == 1
        else:
            assert p50 is None and entry["p95_ms"][k] is None and entry["success_rate"][k] is None
        assert entry["up_ratio"][k] == (1 if k < len(entry["p50_ms"]) - 1 else None)  # the open one: no time yet
    last = engine.history("5m", points=7)["services"]["x"]
    assert all(last[c] == entry[c][-7:] for c in HISTORY_COLUMNS)
    assert last["t0"] == entry["t0"] + (len(entry["p50_ms"]) - 7) * 1.0
    assert engine.state("5m", points=1)["history"]["services"]["x"]["t0"] == clock.t // 1
    big = engine.history("5m", points=10_000)["services"]["x"]
    assert big == entry
    # Once the ring is full, the oldest points leave and t0 moves with them.
    for _ in range(400):
        clock.t += 1
        beat(engine)
        engine.tick()
    full = engine.history("5m")["services"]["x"]
    assert len(full["p50_ms"]) == 301 and full["t0"] == clock.t // 1 - 300
    assert full["up_ratio"][-2] == 1 and full["p50_ms"][-2] is None


def test_coarse_windows_refresh_per_period_and_at_every_state_change():
    """Past its first ten refresh periods (the first coarse tier's step, 10 s), a service's
    1 h and 24 h windows are recomputed once per period, and at once on a state change."""
    clock = Clock()
    engine = Engine(clock)

    def step() -> None:  # one second of a healthy probe: a beat and a timing
        clock.t += 1
        beat(engine)
        timing(engine, "x", 10.0)
        engine.tick()

    beat(engine)
    status(engine, "x", "connected")
    for _ in range(120):  # two minutes: the windows are settled
        step()
    while math.floor(clock.t) % 10 != 0:  # the start of a refresh period
        step()
    before = engine.record("x")["windows"]
    timing(engine, "x", 5000.0)
    step()
    r = engine.record("x")
    assert r["state"] == "connected" and r["probe_alive"]  # no state change in between
    assert r["windows"]["5m"]["max_ms"] == 5000.0   # the first window is exact at every build
    assert r["windows"]["1h"] == before["1h"]        # the coarse ones wait for the next period
    for _ in range(10):
        step()
    assert engine.record("x")["windows"]["1h"]["max_ms"] == 5000.0
    status(engine, "x", "disconnected")              # a state change refreshes them at once
    clock.t += 1
    beat(engine)
    engine.tick()
    w = engine.record("x")["windows"]
    assert w["1h"]["down_s"] == pytest.approx(1.0) and w["24h"]["down_s"] == pytest.approx(1.0)


def test_seven_day_tier_and_deepcopy():
    clock = Clock()
    engine = Engine(clock, Settings(tiers=[(1, 300), (10, 3600), (60, 86400), (3600, 7 * 86400)]))
    status(engine, "x", "connected")
    timing(engine, "x", 10.0)
    clock.t += 2
    engine.tick()
    r = engine.record("x")
    assert set(r["uptime"]) == {"5m", "1h", "24h", "7d"} and r["windows"]["7d"]["count"] == 1
    twin = copy.deepcopy(engine.services["x"])  # the bench clones services this way
    assert twin.series.tiers[3].acc.ok == 1


def test_odd_events_never_break_the_engine():
    """Values the decoder may or may not refuse (it refuses NaN in required number fields)
    are fed straight to the engine: none raises, none counts as a sample."""
    clock = Clock()
    engine = Engine(clock)
    nan, inf = float("nan"), float("inf")
    bodies = [
        ("timing.x", {"service": "x", "endpoint": "/", "duration_ms": nan, "ok": True}),
        ("timing.x", {"service": "x", "endpoint": "/", "duration_ms": inf, "ok": True}),
        ("timing.x", {"service": "x", "endpoint": "/", "duration_ms": -5, "ok": True}),
        ("timing.x", {"service": "x", "endpoint": "/", "duration_ms": 1e300, "ok": False, "error_kind": ["x"]}),
        ("status.x", {"service": "x", "state": "weird", "details": {"queue_depth": nan, "job_time_ms": inf,
                                                                    "providers": "nope"}}),
        ("status.x", {"service": "x", "state": "connected", "details": ["not", "a", "map"]}),
        ("status.x", {"service": "x", "state": "connected", "details": {"queue_depth": True}}),
        ("llm.usage", {"model": "m", "tokens_in": 2**62, "tokens_out": -3, "latency_ms": nan}),
        ("heartbeat.probe.x", {"interval": 1.0, "services": [1, None, "x"]}),
    ]
    for topic, body in bodies:
        engine.ingest(Message(topic, "probe.x", 1, 0.0, body))
        clock.t += 0.5
        engine.tick()
    r = engine.record("x")
    assert engine.bad_events == 0, engine.last_bad_event
    assert r["stats"]["count"] == 1 and r["stats"]["p95_ms"] is None  # only the failure counted
    assert r["queue"]["current"] is None and r["job_time"] is None
    assert engine.record("llm")["usage"]["by_model"]["m"]["tokens_out"] == 0
    assert engine.state("24h")["history"]["services"]["x"]
