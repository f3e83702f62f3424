"""Profiles behind the figures that miss their targets, reproducible with one command each.

    python -m bench.profile ingest      # cProfile of `python -m aggregator run` absorbing 100k events (figure 1)
    python -m bench.profile snapshot    # cProfile of Engine.record() for 1000 services (figure 7)
    python -m bench.profile footprint   # CPU per thread, loop wake-ups and a CPU-clock profile of an idle
                                        # aggregator and a probe (figures 9 and 15); --seconds N (default 60)

The profiled processes are the real ones; profiles are written to bench/out/profiles/.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

import psutil

from .procs import OUT, Procs, wait_port
from tests.fakes.base import free_port

PROFILES = OUT / "profiles"
# Runs a module under cProfile with a CPU clock, so time spent waiting in poll() is not counted.
CPU_PROFILER = """
import cProfile, runpy, sys, time
out, mod = sys.argv[1], sys.argv[2]
sys.argv = [mod] + sys.argv[3:]
pr = cProfile.Profile(time.process_time)
pr.enable()
try:
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    pr.disable()
    pr.dump_stats(out)
"""


def _show(path, sort: str = "tottime", top: int = 18) -> None:
    pstats.Stats(str(path)).sort_stats(sort).print_stats(top)


def ingest() -> None:
    from .fig_bus import MarkedSink, probe_traffic

    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / "aggregator-ingest.prof"
    frames = probe_traffic(100_000)
    with Procs("profile-ingest") as procs:
        # Saturated, the process never waits, so the ordinary (wall-clock) profiler is right
        # here and far lighter than the CPU-clock one.
        procs.start("-m", "cProfile", "-o", str(out), "-m", "aggregator", "run", name="aggregator")
        sink = MarkedSink(procs)
        try:
            for _ in range(2):
                print(f"under the profiler: {sink.burst(frames):,.0f} events/s")
        finally:
            sink.close()
    time.sleep(0.5)
    _show(out)


def snapshot(n: int = 1000) -> None:
    from bus.protocol import Message

    from .fig_engine import Clock, clone_services, fill, new_engine

    clock = Clock(1_700_000_000.0)
    engine = new_engine(clock)
    templates = [f"svc{i:04d}" for i in range(5)]
    fill(engine, clock, templates, 3600, seed=7)
    names = clone_services(engine, templates, n)
    clock.t += 1
    for s in names:  # new data everywhere, so no cached record can answer
        engine.ingest(Message(f"timing.{s}", "probe.bench", 1, clock.t,
                              {"service": s, "endpoint": "/q", "duration_ms": 12.5, "ok": True, "error_kind": None}))
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for s in names:
        engine.record(s)
    prof.disable()
    print(f"record() for {n} services: {(time.perf_counter() - start) * 1e6 / n:.1f} µs per service under the profiler")
    PROFILES.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(PROFILES / "engine-record.prof")
    _show(PROFILES / "engine-record.prof")


def footprint(seconds: float = 60.0) -> None:
    """Where an idle monitor's CPU goes: per thread, how often each loop wakes, and what runs.
    The CPU clock ticks in 10 ms steps, so a run under a minute says little about 0.1 %."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / "aggregator-idle.prof"
    probe_out = PROFILES / "probe-idle.prof"
    with Procs("profile-footprint") as procs:
        port = free_port()
        procs.fake("gradio", port, "--app", "wan2gp")
        wait_port(port)
        agg = procs.start("-c", CPU_PROFILER, str(out), "aggregator", "run", name="aggregator")
        probe = procs.start("-c", CPU_PROFILER, str(probe_out), "probes", "run", "wan2gp",
                            "--url", f"http://127.0.0.1:{port}", name="probe-wan2gp")
        time.sleep(3)
        watched = {"aggregator": psutil.Process(agg.pid), "probe wan2gp": psutil.Process(probe.pid)}
        before = {n: {t.id: t.user_time + t.system_time for t in p.threads()} for n, p in watched.items()}
        time.sleep(seconds)
        for name, p in watched.items():
            print(f"{name}: CPU by thread over {seconds:g} s (thread name from /proc where available)")
            for t in p.threads():
                try:
                    comm = open(f"/proc/{p.pid}/task/{t.id}/comm").read().strip()
                except OSError:
                    comm = ""
                used = t.user_time + t.system_time - before[name].get(t.id, 0.0)
                print(f"   {t.id:>8} {comm:<16} {used * 1000:8.1f} ms  ({used / seconds * 100:.2f} % of a core)")
    time.sleep(0.5)
    for name, path in (("aggregator", out), ("probe wan2gp", probe_out)):
        stats = pstats.Stats(str(path))
        polls = sum(v[1] for k, v in stats.stats.items() if k[2] == "poll")  # type: ignore[attr-defined]
        print(f"{name} loop: {polls} poll() calls in its lifetime (~{seconds + 3:g} s); CPU-clock profile:")
        _show(path, "tottime", 25)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ingest", "snapshot", "footprint"))
    parser.add_argument("--seconds", type=float, default=60.0, help="footprint: observation length")
    args = parser.parse_args()
    if args.what == "footprint":
        footprint(args.seconds)
    else:
        {"ingest": ingest, "snapshot": snapshot}[args.what]()


if __name__ == "__main__":
    sys.exit(main())
