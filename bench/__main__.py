"""`python -m bench`: run the figures, print the table, write results.json, plots and README.

    python -m bench            # make bench: everything, writes bench/results.json, bench/plots/, README
    python -m bench --quick    # make bench-quick: smaller, writes bench/out/quick/ only
    python -m bench --tiny --out DIR   # the smoke test's mode
    python -m bench --only ingest,bus_latency
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .harness import MODES, Figure, NotBuilt
from .procs import OUT, ROOT
from . import report

BENCH = ROOT / "bench"


def _figures():
    """(key, number, title, measure) in table order. Imports are lazy: a part that does not
    import (not built yet, or broken) costs one figure, never the run."""
    def lazy(module: str, fn: str):
        def run(mode):
            import importlib

            return getattr(importlib.import_module(f"bench.{module}"), fn)(mode)
        return run

    return [
        ("ingest", 1, "Aggregator ingest", lazy("fig_bus", "measure_ingest")),
        ("bus_latency", 2, "Bus latency, probe publish → client has the snapshot", lazy("fig_bus", "measure_latency")),
        ("detection", 3, "Detection: backend killed → snapshot shows it down", lazy("fig_detection", "measure_detection")),
        ("blender_tick", 4, "Blender timer tick (real bpy)", lazy("fig_blender", "measure_tick")),
        ("blender_update", 5, "Status change → Blender property updated", lazy("fig_blender", "measure_update")),
        ("store_memory", 6, "Metric store memory, 24 h tiers full", lazy("fig_engine", "measure_memory")),
        ("snapshot_cost", 7, "Snapshot build cost per service", lazy("fig_engine", "measure_snapshot")),
        ("quantile_accuracy", 8, "Quantile accuracy per tier", lazy("fig_engine", "measure_accuracy")),
        ("footprint", 9, "Always-on footprint (aggregator + every probe)", lazy("fig_footprint", "measure_footprint")),
        ("backend_load", 10, "Load a probe puts on its backend", lazy("fig_footprint", "measure_backend_load")),
        ("blender_draw", 11, "Panel draw cost in a real Blender GUI", lazy("fig_blender", "measure_draw")),
        ("joiner_reply", 12, "Late-joiner reply with history, 10 and 500 services", lazy("fig_joiner", "measure_joiner")),
        ("recovery", 13, "Recovery: backend port listening again → snapshot shows it up", lazy("fig_detection", "measure_recovery")),
        ("auth_ingest", 14, "Ingest with local CURVE authentication on", lazy("fig_auth", "measure_auth_ingest")),
        ("peer", 15, "Side by side with Prometheus blackbox_exporter", lazy("fig_peer", "measure_peer")),
    ]


FIGURE_KEYS = tuple(k for k, *_ in _figures())


def _meta(mode: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        # The figures describe the code at that commit only if no tracked source differs from it
        # (the files the bench itself writes do not count).
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":!README.md", ":!bench/results.json", ":!bench/plots"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and changed:
            commit += " + uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import zmq

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "mode": mode, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
        "machine": f"{os.cpu_count()} cores, {cpu}, {platform.system()}, Python {platform.python_version()}, "
                   f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}",
        "load_average_at_start": load,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes, under a minute")
    size.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test)")
    parser.add_argument("--only", help=f"comma-separated figure keys: {', '.join(FIGURE_KEYS)}")
    parser.add_argument("--out", help="directory for results.json and plots (default: bench/ for a full run, "
                                      "bench/out/<mode>/ otherwise)")
    parser.add_argument("--readme", choices=("yes", "no"), help="write README.md's Performance section "
                                                                "(default: yes only for a full run of every figure into bench/)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    out = Path(args.out) if args.out else (BENCH if mode_name == "full" else OUT / mode_name)
    plots_dir = out / "plots"
    # The README shows the committed figures: by default only a full run of every figure into
    # bench/ writes it, never a partial (--only) or redirected (--out) one.
    default_run = mode_name == "full" and not args.out and not args.only
    write_readme = (args.readme or ("yes" if default_run else "no")) == "yes"
    wanted = set(args.only.split(",")) if args.only else set(FIGURE_KEYS)
    unknown = wanted - set(FIGURE_KEYS)
    if unknown:
        print(f"bench: unknown figure(s) {', '.join(sorted(unknown))}; known: {', '.join(FIGURE_KEYS)}",
              file=sys.stderr)
        return 2

    meta = _meta(mode_name)
    print(f"bench: {mode_name} run on {meta['machine']}", flush=True)
    started = time.perf_counter()
    figures: list[Figure] = []
    durations = {}
    for key, number, title, measure in _figures():
        if key not in wanted:
            continue
        print(f"bench: {number:>2} {title} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        fig = None
        for attempt in (1, 2):  # one retry: on a shared machine a neighbour may kill or starve a child
            try:
                fig = measure(mode)
                break
            except NotBuilt as exc:
                fig = Figure(key, number, title, status="not_built", reason=str(exc))
                break
            except Exception as exc:  # one broken figure must not cost the others
                fig = Figure(key, number, title, status="error", reason=f"{type(exc).__name__}: {exc}"[:300])
                traceback.print_exc()
                if attempt == 1:
                    print(f"bench: {key} failed; retrying once ...", end=" ", flush=True)
        durations[key] = round(time.perf_counter() - t0, 1)
        print(f"{durations[key]:.0f} s: {report._result_text(fig)}", flush=True)
        figures.append(fig)
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    meta["figure_durations_s"] = durations

    report.write_json(out / "results.json", meta, figures)
    print()
    print(report.table(figures))
    for f in figures:
        if f.status == "ok" and f.extra.get("table_md"):
            print(f"\n{f.number}. {f.title}\n{f.extra['table_md']}")
    plots = [] if args.no_plots else report.plot({f.key: f for f in figures}, plots_dir)
    print(f"\nbench: {meta['duration_s']:.0f} s; wrote {out / 'results.json'}"
          + "".join(f", {p}" for p in plots))
    if write_readme:
        rel = [p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p) for p in plots]
        if report.update_readme(ROOT / "README.md", report.readme_section(meta, figures, rel)):
            print("bench: updated the Performance section of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
