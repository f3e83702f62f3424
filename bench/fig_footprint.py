"""Figures 9 and 10: the always-on cost of the monitor, and the load its probes put on backends.

One observation serves both: the aggregator (`python -m aggregator run`) and the probe
supervisor (`python -m probes run-all`, which starts one probe process per enabled
service) run at default settings against fake backends, each fake behind a byte-counting
TCP relay. After a warm-up, the observation is cut into equal windows; each window gives
one sample of every figure (psutil CPU time and RSS per process, requests and bytes per
backend), and the summaries are over those windows.
"""
from __future__ import annotations

import functools
import time

import psutil

from bus.config import load as load_config
from probes.supervisor import probe_service

from .harness import Figure, Mode, NotBuilt, summary
from .procs import CountingProxy, Procs, cpu_seconds, fake_for, wait_port
from tests.fakes.base import free_port


def _config(proxies: dict[str, CountingProxy], services: dict[str, dict]) -> str:
    lines = []
    for name in services:
        if name in proxies and name != "llm":
            lines += [f"[services.{name}]", f'url = "{proxies[name].url}"', ""]
    if "llm" in proxies:  # the language-model probe reaches a local Ollama (faked) through the relay
        lines += ["[llm.ollama]", f'url = "{proxies["llm"].url}"', ""]
    return "\n".join(lines)


def _label(proc: psutil.Process, aggregator_pid: int, supervisor_pid: int) -> str:
    if proc.pid == aggregator_pid:
        return "aggregator"
    if proc.pid == supervisor_pid:
        return "probe supervisor"
    service = probe_service(proc)  # spawned `probes run x`, or forked and named probe-x (Linux)
    return f"probe {service}" if service else " ".join(proc.cmdline()[1:4])


def _pss(proc: psutil.Process) -> float | None:
    """Proportional set size in MB (a shared library counts once across processes), where the
    platform has it (Linux); None elsewhere."""
    try:
        pss = getattr(proc.memory_full_info(), "pss", None)
    except (psutil.AccessDenied, AttributeError):
        return None
    return None if pss is None else pss / 1e6


@functools.lru_cache(maxsize=None)
def observe(mode: Mode) -> dict:
    services = {n: s for n, s in load_config(text="").services.items() if s.get("enabled", True)}
    fakes = {n: fake_for(s) for n, s in services.items()}
    if not any(fakes.values()):
        raise NotBuilt("no probe with a fake backend")
    proxies: dict[str, CountingProxy] = {}
    procs = Procs("footprint")
    try:
        for name, found in fakes.items():
            if found is None:
                continue
            module, args = found
            port = free_port()
            procs.fake(module, port, *args)
            wait_port(port)
            proxies[name] = CountingProxy(port)
        (procs.dir / "config.toml").write_text(_config(proxies, services), encoding="utf-8")
        agg = procs.aggregator()
        sup = procs.start("-m", "probes", "run-all", name="probes")
        client = procs.client("bench-footprint")
        try:
            procs.wait_synced(client)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(client.services) < len(services):
                client.poll(timeout_ms=100)
            started = time.monotonic() - deadline + 20
            seen = sorted(client.services)
        finally:
            client.close()  # a connected client is not part of the always-on cost
        time.sleep(mode.footprint_warmup)
        procs.check_alive()
        watched = [psutil.Process(agg.pid), psutil.Process(sup.pid)] + psutil.Process(sup.pid).children()
        names = {p.pid: _label(p, agg.pid, sup.pid) for p in watched}
        window = mode.footprint_seconds / mode.runs
        windows = []
        for _ in range(mode.runs):
            cpu0 = {p.pid: cpu_seconds(p) for p in watched}
            load0 = {n: p.snapshot() for n, p in proxies.items()}
            t0 = time.perf_counter()
            time.sleep(window)
            wall = time.perf_counter() - t0
            cpu = {names[p.pid]: (cpu_seconds(p) - cpu0[p.pid]) / wall * 100 for p in watched}
            rss = {names[p.pid]: p.memory_info().rss / 1e6 for p in watched}
            pss = {names[p.pid]: _pss(p) for p in watched}
            load = {}
            for n, p in proxies.items():
                c, up, down, req = p.snapshot()
                c0, up0, down0, req0 = load0[n]
                load[n] = {"connections": (c - c0) * 60 / wall, "bytes": (up + down - up0 - down0) * 60 / wall,
                           "bytes_up": (up - up0) * 60 / wall, "bytes_down": (down - down0) * 60 / wall,
                           "requests": (req - req0) * 60 / wall}
            windows.append({"cpu": cpu, "rss": rss, "pss": pss, "load": load, "wall": wall})
        procs.check_alive()
        result = {"windows": windows, "startup_s": started, "seen": seen, "processes": sorted(set(names.values())),
                  "backends": sorted(proxies), "missing": sorted(n for n, f in fakes.items() if f is None)}
    except BaseException:
        procs.__exit__(RuntimeError)  # stop everything, keep the logs
        raise
    finally:
        for p in proxies.values():
            p.close()
    procs.__exit__(None)  # stop everything; on success the scratch directory goes too
    return result


def measure_footprint(mode: Mode) -> Figure:
    obs = observe(mode)
    fig = Figure("footprint", 9, "Always-on footprint (aggregator + every probe)",
                 target="all together < 1 % of one core; each RSS < 40 MB",
                 how=(f"`python -m aggregator run` + `python -m probes run-all` at default settings against fake "
                      f"backends; CPU time (scheduler ns counters on Linux), psutil RSS and PSS per process over {mode.footprint_seconds:g} s "
                      f"(after {mode.footprint_warmup:g} s warm-up) cut into {mode.runs} windows"))
    ws = obs["windows"]
    fig.metrics["total_cpu_pct"] = summary([sum(w["cpu"].values()) for w in ws], "% of a core")
    fig.metrics["max_rss_mb"] = summary([max(w["rss"].values()) for w in ws], "MB")
    fig.metrics["total_rss_mb"] = summary([sum(w["rss"].values()) for w in ws], "MB")
    if all(v is not None for w in ws for v in w["pss"].values()):
        fig.metrics["total_pss_mb"] = summary([sum(w["pss"].values()) for w in ws], "MB")
    per = {}
    for name in obs["processes"]:
        cpu = summary([w["cpu"][name] for w in ws], "%")
        rss = summary([w["rss"][name] for w in ws], "MB")
        fig.metrics[f"cpu_pct {name}"] = cpu
        fig.metrics[f"rss_mb {name}"] = rss
        per[name] = {"cpu_pct": cpu["median"], "rss_mb": rss["median"]}
    fig.extra["per_process"] = per
    total = fig.metrics["total_cpu_pct"]["median"]
    rss = fig.metrics["max_rss_mb"]["median"]
    fig.met = total < 1.0 and rss < 40
    fig.verdict = f"{total:.2f} % of a core for {len(per)} processes; largest RSS {rss:.1f} MB"
    if "total_pss_mb" in fig.metrics:
        fig.verdict += f"; PSS of all {fig.metrics['total_pss_mb']['median']:.0f} MB"
    if obs["missing"]:
        fig.verdict += f" (no fake yet for: {', '.join(obs['missing'])})"
    return fig


def measure_backend_load(mode: Mode) -> Figure:
    obs = observe(mode)
    fig = Figure("backend_load", 10, "Load a probe puts on its backend", target="reported",
                 how=("same observation as figure 9: every fake backend behind a TCP relay counting HTTP "
                      "requests and bytes both ways (a held WebSocket included); rate per minute over the "
                      "whole observation (the LLM probe checks once a minute)"))
    ws = obs["windows"]
    wall = sum(w["wall"] for w in ws)
    parts = []

    def rate(name: str, key: str, scale: float, unit: str) -> dict:
        # The language-model probe checks once a minute, so most short windows see none of
        # its requests: the figure is the rate over the whole observation, and min/max/n
        # are those of the windows.
        per_window = [w["load"][name][key] / scale for w in ws]
        total = sum(w["load"][name][key] * w["wall"] / 60 for w in ws) / scale
        overall = min(max(total * 60 / wall, min(per_window)), max(per_window))  # float noise only
        return {"median": overall, "min": min(per_window), "max": max(per_window), "n": len(ws),
                "unit": unit, "basis": "whole observation; min/max over windows"}

    for name in obs["backends"]:
        req = rate(name, "requests", 1, "req/min")
        kb = rate(name, "bytes", 1000, "kB/min")
        fig.metrics[f"{name} requests_per_min"] = req
        fig.metrics[f"{name} kb_per_min"] = kb
        parts.append(f"{name} {req['median']:.0f} req, {kb['median']:.1f} kB")
    fig.verdict = "per minute: " + "; ".join(parts)
    return fig
