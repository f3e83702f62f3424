"""The bench harness cannot rot: its tiny mode runs every figure and writes results.json.

This checks that figures ran and were recorded, never how fast anything was: benchmarks
are not tests, and nothing here depends on timing.
"""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

FIGURES = ("ingest", "bus_latency", "detection", "blender_tick", "blender_update", "store_memory",
           "snapshot_cost", "quantile_accuracy", "footprint", "backend_load", "blender_draw",
           "joiner_reply", "recovery", "auth_ingest", "peer")


def test_tiny_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out), "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert tuple(data["figures"]) == FIGURES
    assert data["meta"]["mode"] == "tiny"
    for key, fig in data["figures"].items():
        # Every part exists now: a figure that stops measuring (not_built or error) is a failure.
        assert fig["status"] == "ok", f"{key}: {fig['status']}: {fig['reason']}"
        assert fig["how"] and fig["metrics"], key
        for name, stat in fig["metrics"].items():
            assert stat["n"] >= 1 and stat["min"] <= stat["median"] <= stat["max"], (key, name, stat)
    # Nothing outside the chosen directory is written by a tiny run (no README, no bench/results.json).
    assert "Performance section" not in done.stdout
