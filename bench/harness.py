"""What every figure shares: run sizes per mode, repeated runs, summaries, and the result record.

A figure is a function `measure(mode) -> Figure`. It returns a Figure whose `metrics` hold
summaries (median, min, max, n of the measured runs; warm-up runs are never included) and,
where the issue asks for one, a same-run `baseline` and the `ratio` between them. A figure
whose part has not landed yet raises NotBuilt with the reason, and is reported as skipped.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


class NotBuilt(Exception):
    """The part this figure measures does not exist in the tree yet."""


@dataclass(frozen=True)
class Mode:
    name: str
    runs: int  # measured runs per figure (the median is over these)
    warmup: int  # runs done first and thrown away
    ingest_events: int  # events per ingest run
    latency_samples: int  # round trips per latency run
    detection_runs: int
    detection_interval: float | None  # None: the probe's default interval (what users get)
    detection_backends: tuple[str, ...]
    store_services: tuple[int, ...]
    store_hours: float  # how much history fills the metric store
    snapshot_services: tuple[int, ...]
    quantile_samples: int  # samples per tier window
    footprint_seconds: float  # observation after warm-up, split into `runs` windows
    footprint_warmup: float
    blender_ticks: int  # timer calls per phase, warm-up included (at the add-on's interval)
    blender_updates: int  # status changes timed, warm-up included


MODES = {
    # `make bench`: every figure at full size, under 10 minutes on 2 cores.
    "full": Mode("full", runs=5, warmup=1, ingest_events=100_000, latency_samples=200, detection_runs=5,
                 detection_interval=None, detection_backends=("comfyui", "wan2gp", "rvc", "audioldm"),
                 store_services=(5, 50, 500), store_hours=24.0,
                 snapshot_services=(1, 10, 100, 1000), quantile_samples=20_000, footprint_seconds=60.0,
                 footprint_warmup=5.0, blender_ticks=600, blender_updates=120),
    # `make bench-quick`: same figures, smaller, under a minute.
    "quick": Mode("quick", runs=5, warmup=1, ingest_events=20_000, latency_samples=30, detection_runs=2,
                  detection_interval=0.5, detection_backends=("comfyui", "wan2gp"),
                  store_services=(5, 50), store_hours=1.0,
                  snapshot_services=(1, 10, 100), quantile_samples=3_000, footprint_seconds=6.0,
                  footprint_warmup=1.0, blender_ticks=60, blender_updates=30),
    # The smoke test's mode: proves every code path still runs, measures nothing worth quoting
    # (one measured run is a median, a min and a max like any other; a second run took
    # time and proved no other path).
    "tiny": Mode("tiny", runs=1, warmup=0, ingest_events=2_000, latency_samples=5, detection_runs=1,
                 detection_interval=0.5, detection_backends=("comfyui", "wan2gp"),
                 store_services=(2, 4), store_hours=0.1,
                 snapshot_services=(1, 4), quantile_samples=500, footprint_seconds=2.0,
                 footprint_warmup=0.5, blender_ticks=12, blender_updates=4),
}


def summary(values: list[float], unit: str) -> dict[str, Any]:
    """Median, min, max and n of measured values (never the warm-up)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "unit": unit}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "unit": unit}


def quantile(sorted_values: list[float], q: float) -> float:
    """Exact quantile by rank, the definition DDSketch's guarantee is stated against:
    the value at rank floor(q * (n - 1)) of the sorted samples."""
    return sorted_values[int(q * (len(sorted_values) - 1))]


def repeat(mode: Mode, once: Callable[[int], Any], runs: int | None = None) -> list[Any]:
    """Call once(i) for the warm-up runs (discarded) and the measured runs (returned)."""
    runs = mode.runs if runs is None else runs
    for i in range(mode.warmup):
        once(-1 - i)
    return [once(i) for i in range(runs)]


@dataclass
class Figure:
    key: str
    number: int
    title: str
    how: str = ""  # one line: how it was measured
    target: str = ""
    status: str = "ok"  # ok | not_built | error
    reason: str = ""  # why it was skipped or failed
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratio: dict[str, dict[str, Any]] = field(default_factory=dict)
    met: bool | None = None  # target met? None when there is no target or nothing measured
    verdict: str = ""  # short text for the table's result column
    extra: dict[str, Any] = field(default_factory=dict)  # raw series for plots, per-size tables

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt(value: float | None, unit: str = "") -> str:
    """A number for a table cell: 3 significant figures, thousands separated when large."""
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def cell(stat: dict[str, Any]) -> str:
    """'median (min–max, n=5)' for a summary."""
    if not stat or stat.get("median") is None:
        return "—"
    unit = stat.get("unit", "")
    return f"{fmt(stat['median'], unit)} ({fmt(stat['min'])}–{fmt(stat['max'])}, n={stat['n']})"
