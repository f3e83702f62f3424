"""Outputs of a bench run: results.json, the printed table, the plots, the README section."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .harness import Figure, cell, fmt

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
MET = {True: "yes", False: "**no**", None: "—"}
MET_PLAIN = {True: "yes", False: "NO", None: "-"}


def _lean(value: Any) -> Any:
    """Drop long raw series from JSON (the plots have them); keep per-size tables."""
    if isinstance(value, dict):
        return {k: _lean(v) for k, v in value.items() if not (isinstance(v, list) and len(v) > 50)}
    return value


def write_json(path: Path, meta: dict, figures: list[Figure]) -> None:
    data = {"meta": meta, "figures": {f.key: _lean(f.as_dict()) for f in figures}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _baseline_text(f: Figure) -> str:
    if not f.baseline:
        return "—"
    if len(f.baseline) == 1:
        stat = next(iter(f.baseline.values()))
        return fmt(stat["median"], stat.get("unit", ""))

    def short(name: str) -> str:  # "wan2gp_interval_plus_timeout_s" -> "wan2gp interval plus timeout"
        for suffix in ("_ms", "_s", "_per_s"):
            name = name.removesuffix(suffix)
        return name.replace("_", " ")

    return "; ".join(f"{short(name)} {fmt(stat['median'], stat.get('unit', ''))}" for name, stat in f.baseline.items())


def _result_text(f: Figure) -> str:
    if f.status == "not_built":
        return f"skipped: not built yet ({f.reason})"
    if f.status == "error":
        return "failed: " + " ".join(f.reason.split())[:160]
    return f.verdict


def table(figures: list[Figure]) -> str:
    """The printed table: one row per figure, then how each was measured."""
    rows = [("#", "figure", "result (medians)", "target", "met")]
    for f in figures:
        rows.append((str(f.number), f.title, _result_text(f), f.target, MET_PLAIN[f.met]))
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((2, 34, 90, 40, 3))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(text[:w].ljust(w) if j < 4 else text for j, (text, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for f in figures:
        if f.status == "ok":
            lines.append(f"{f.number:>2}. {f.how}")
            for name, stat in list(f.metrics.items()) + [(f"baseline {k}", v) for k, v in f.baseline.items()] + \
                    [(f"ratio {k}", v) for k, v in f.ratio.items()]:
                lines.append(f"      {name}: {cell(stat)}")
    return "\n".join(lines)


def readme_section(meta: dict, figures: list[Figure], plots: list[str]) -> str:
    """Markdown for README.md between the bench markers (generated: do not edit by hand)."""
    out = [
        f"Measured by `make bench` on {meta['when']} at commit `{meta.get('commit') or 'unknown'}` "
        f"({meta['machine']}); generated, do not edit by hand. "
        "Each figure is the median of the measured runs (min–max and run count in "
        "[`bench/results.json`](bench/results.json)); ratios are against a baseline measured in the same run. "
        "What each figure means for you: [`bench/README.md`](bench/README.md).",
        "",
        "| # | What | Measured (median) | Same-run baseline | Target | Met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        out.append(f"| {f.number} | {f.title} | {_result_text(f).replace('|', '/')} | "
                   f"{_baseline_text(f) if f.status == 'ok' else '—'} "
                   f"| {f.target} | {MET[f.met]} |")
    for f in figures:  # a figure with rows of its own (figure 15's side-by-side) gets its table
        if f.status == "ok" and f.extra.get("table_md"):
            out += ["", f"**{f.number}. {f.title}**", "", f.extra["table_md"]]
    out += ["", "How each was measured:", ""]
    for f in figures:
        if f.status == "ok":
            out.append(f"{f.number}. {f.how}")
    out.append("")
    for p in plots:
        out.append(f"![{Path(p).stem}]({p})")
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme: Path, section: str) -> bool:
    """Replace what lies between the markers (append the markers if missing). Returns True if written."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    block = f"{MARK_START}\n{section}{MARK_END}"
    if MARK_START in text and MARK_END in text:
        new = re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda _m: block, text, count=1,
                     flags=re.S)
    else:
        new = text.rstrip("\n") + "\n\n" + block + "\n"
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return True


# -- plots ------------------------------------------------------------------------------------
def _ecdf(ax, values: list[float], label: str) -> None:
    xs = sorted(values)
    if not xs:
        return
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")


def plot(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Two pictures: latency distributions, and cost as the number of services grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    # 1. Latency distributions (empirical CDFs on a log axis).
    panels = []
    bus = figures.get("bus_latency")
    if bus and bus.status == "ok" and bus.extra.get("samples_ms"):
        panels.append(("Bus: probe publish → client has it", [
            (bus.extra["samples_ms"]["raw"], "raw PUB→SUB hop (baseline)"),
            (bus.extra["samples_ms"]["bus"], "probe → aggregator → MonitorClient")], "ms"))
    tick = figures.get("blender_tick")
    if tick and tick.status == "ok":
        panels.append(("Blender timer tick (real bpy)", [
            (tick.extra.get("idle_tick_ms", []), "idle"),
            (tick.extra.get("services5_tick_ms", []), "5 services @ 1 Hz"),
            (tick.extra.get("flood_tick_ms", []), "10k msg/s flood")], "ms"))
    upd = figures.get("blender_update")
    if upd and upd.status == "ok":
        panels.append(("Status change → Blender property", [(upd.extra.get("update_ms", []), "latency")], "ms"))
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
        for ax, (title, series, unit) in zip(axes[0], panels):
            for values, label in series:
                _ecdf(ax, values, label)
            ax.set_xscale("log")
            ax.set_xlabel(f"latency ({unit}, log scale)")
            ax.set_ylabel("fraction of samples ≤ x")
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        if tick and tick.status == "ok":
            ax = axes[0][[p[0] for p in panels].index("Blender timer tick (real bpy)")]
            ax.axvline(0.1, color="grey", ls=":", lw=1)
            ax.axvline(2.0, color="grey", ls="--", lw=1)
        if upd and upd.status == "ok":
            axes[0][-1].axvline(100, color="grey", ls="--", lw=1)
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # 2. Cost vs number of services.
    snap = figures.get("snapshot_cost")
    mem = figures.get("store_memory")
    cols = [x for x in (snap, mem) if x and x.status == "ok"]
    if cols:
        fig, axes = plt.subplots(1, len(cols), figsize=(5.2 * len(cols), 3.8), squeeze=False)
        i = 0
        if snap in cols:
            series = [(snap.extra.get(key) or {}, label) for key, label in (
                ("snapshot_us_per_service", "snapshot (all records)"),
                ("late_joiner_us_per_service", "late-joiner reply (with 5 m history)"))]
            _per_service_panel(axes[0][i], series, 50, "target 50 µs", "µs per service",
                               "Snapshot build cost per service")
            i += 1
        if mem in cols:
            _per_service_panel(axes[0][i], [(mem.extra.get("per_size_mb") or {}, "metric store")], 2.0,
                               "2 MB (target at 5 services)", "MB (tracemalloc)", "Metric store memory, tiers full")
        fig.tight_layout()
        path = out_dir / "scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


__all__ = ["write_json", "table", "readme_section", "update_readme", "plot", "fmt"]


def _per_service_panel(ax, series, target: float, target_label: str, ylabel: str, title: str) -> None:
    """One log-log panel of a figure against the number of services, with its target line.
    `series` holds ({services: value}, label) pairs; JSON may have turned the keys into str."""
    for data, label in series:
        ns = sorted(int(n) for n in data)
        ax.plot(ns, [data[n] if n in data else data[str(n)] for n in ns], marker="o", label=label)
    ax.axhline(target, color="grey", ls="--", lw=1, label=target_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
