"""Figure 15: side by side with Prometheus + blackbox_exporter, the tool our users could run instead.

One run, the same fake backends (ComfyUI and the Gradio-shaped apps from tests/fakes/), both
tools at the project's default interval (2 s; Prometheus scrapes blackbox every 2 s, and
blackbox's http prober GETs the endpoint our probe checks first).

- Footprint and load, each tool in turn, alone: after a warm-up, an idle observation (60 s in
  a full run) with every backend behind a byte-counting TCP relay (bench.procs.CountingProxy,
  as figure 10); psutil CPU time, RSS and PSS (shared pages count once across the tree) summed
  over each tool's whole process tree, cut into windows.
- Detection and recovery, both tools watching at once (so both see the very same event): a
  backend is killed hard at a random point of the cycle; the time until our MonitorClient's
  record is down and until Prometheus's HTTP API says `probe_success` 0 are taken; then, at a
  random point again, the backend is restarted and the clock starts when its port listens;
  the time until each shows it up again. Here the tools reach the fakes directly: a relay
  would accept connections for a dead backend.

Ratios are ours ÷ theirs, judged on the median; the max is reported.
"""
from __future__ import annotations

import http.client
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psutil

from bus.config import load as load_config

from .fig_detection import listen_time
from .harness import Figure, Mode, NotBuilt, fmt, summary
from .procs import CountingProxy, Procs, cpu_seconds, fake_for, wait_port
from tests.fakes.base import free_port

INTERVAL = 2.0  # the project's default check interval, and Prometheus's scrape interval here
TIMEOUT = 2.0  # the project's default check timeout, and blackbox's module timeout
FOOTPRINT_SERVICES = ("comfyui", "wan2gp", "rvc", "audioldm")  # four backends, as the issue measured
KINDS = {"comfyui": "ComfyUI", "wan2gp": "Gradio"}  # one service per backend kind for detection/recovery
DOWN = ("disconnected", "error")
# What blackbox GETs: the endpoint our probe checks first for that backend.
CHECK_PATH = {"comfyui": "/system_stats", "wan2gp": "/config", "rvc": "/config", "audioldm": "/config"}
TARGETS = {"detection": 1.0, "recovery": 1.0, "cpu": 1.0, "pss": 1.5}
# Runs per backend kind in a full run. The peer's times are uniform over its 2 s scrape cycle,
# so the median of 5 lands under 0.5 s one run in ten by luck alone; 9 halve that chance.
FULL_RUNS = 9


def _binaries() -> tuple[str, str]:
    prom = shutil.which("prometheus")
    bb = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if not prom or not bb:
        raise NotBuilt("prometheus and prometheus-blackbox-exporter are not installed "
                       "(apt-get install prometheus prometheus-blackbox-exporter)")
    return prom, bb


class Peer:
    """blackbox_exporter and Prometheus on free loopback ports, with their own configs and TSDB
    in a temp dir; `value(url)` is probe_success for that target from Prometheus's HTTP API."""

    def __init__(self, targets: list[str]) -> None:
        prom, bb = _binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
        self.bb_port, self.prom_port = free_port(), free_port()
        (self.dir / "blackbox.yml").write_text(
            "modules:\n  http_2xx:\n    prober: http\n"
            f"    timeout: {TIMEOUT:g}s\n    http:\n      preferred_ip_protocol: ip4\n", encoding="utf-8")
        (self.dir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {INTERVAL:g}s\n  scrape_timeout: {TIMEOUT:g}s\n"
            "  evaluation_interval: 1m\n"
            "scrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n"
            "    params:\n      module: [http_2xx]\n"
            "    static_configs:\n      - targets:\n" + "".join(f"        - {t}\n" for t in targets) +
            "    relabel_configs:\n"
            "      - source_labels: [__address__]\n        target_label: __param_target\n"
            "      - source_labels: [__param_target]\n        target_label: instance\n"
            f"      - target_label: __address__\n        replacement: 127.0.0.1:{self.bb_port}\n",
            encoding="utf-8")
        self.procs: list[subprocess.Popen] = []
        try:
            self._start([bb, f"--config.file={self.dir / 'blackbox.yml'}",
                         f"--web.listen-address=127.0.0.1:{self.bb_port}", "--log.level=warn"], "blackbox")
            self._start([prom, f"--config.file={self.dir / 'prometheus.yml'}",
                         f"--web.listen-address=127.0.0.1:{self.prom_port}",
                         f"--storage.tsdb.path={self.dir / 'tsdb'}", "--log.level=warn"], "prometheus")
            wait_port(self.bb_port)
            wait_port(self.prom_port)
            self.conn = http.client.HTTPConnection("127.0.0.1", self.prom_port, timeout=5)
        except BaseException:
            self.close()
            raise

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.dir / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=self.dir))
        log.close()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                tail = (self.dir / ("blackbox.log" if p is self.procs[0] else "prometheus.log")).read_text()[-1500:]
                raise RuntimeError(f"{Path(p.args[0]).name} exited with code {p.returncode}:\n{tail}")

    def _get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()  # a dropped keep-alive connection: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until Prometheus says it is ready (its TSDB is open; before that the API answers 503)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self._get("/-/ready")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Prometheus was not ready within {timeout:g} s")

    def values(self) -> dict[str, float]:
        """probe_success per target URL (the instance label), as Prometheus answers now."""
        status, raw = self._get("/api/v1/query?query=" + quote("probe_success"))
        if status != 200:
            raise RuntimeError(f"Prometheus query answered HTTP {status}: {raw[:200]!r}")
        body = json.loads(raw)
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in body["data"]["result"]}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root] + root.children(recursive=True)
        except psutil.Error:
            pass
    return out


def _pss(p: psutil.Process) -> float | None:
    try:
        return getattr(p.memory_full_info(), "pss", None)
    except (psutil.AccessDenied, AttributeError):
        return None


def _observe(mode: Mode, pids: list[int], proxies: dict[str, CountingProxy], check_alive) -> list[dict]:
    """Windows of idle observation of one tool's process tree: CPU %, RSS, PSS, load per backend."""
    time.sleep(mode.footprint_warmup)
    check_alive()
    watched = _tree(pids)
    window = mode.footprint_seconds / mode.runs
    windows = []
    for _ in range(mode.runs):
        cpu0 = {p.pid: cpu_seconds(p) for p in watched}
        load0 = {n: p.snapshot() for n, p in proxies.items()}
        t0 = time.perf_counter()
        time.sleep(window)
        wall = time.perf_counter() - t0
        cpu = sum(cpu_seconds(p) - cpu0[p.pid] for p in watched) / wall * 100
        rss = sum(p.memory_info().rss for p in watched) / 2**20
        pss_each = [_pss(p) for p in watched]
        pss = sum(pss_each) / 2**20 if all(v is not None for v in pss_each) else None
        load = {}
        for n, p in proxies.items():
            c, up, down, req = p.snapshot()
            c0, up0, down0, req0 = load0[n]
            load[n] = {"requests": (req - req0) * 60 / wall, "bytes": (up + down - up0 - down0) * 60 / wall}
        windows.append({"cpu": cpu, "rss": rss, "pss": pss, "load": load, "wall": wall})
    check_alive()
    return windows


def _our_config(urls: dict[str, str], services: dict[str, dict]) -> str:
    lines = []
    for name in services:
        if name in urls:
            lines += [f"[services.{name}]", f'url = "{urls[name]}"', f"interval = {INTERVAL}",
                      f"timeout = {TIMEOUT}", ""]
        else:
            lines += [f"[services.{name}]", "enabled = false", ""]
    return "\n".join(lines)


def _ours_running(procs: Procs, services: list[str]):
    """Start the aggregator and `probes run-all`; wait until every service is connected."""
    agg = procs.aggregator()
    sup = procs.start("-m", "probes", "run-all", name="probes")
    client = procs.client("bench-peer")
    procs.wait_synced(client)
    deadline = time.monotonic() + 30
    while not all((client.services.get(s) or {}).get("state") == "connected" for s in services):
        if time.monotonic() > deadline:
            client.close()
            raise RuntimeError(f"our probes did not show {', '.join(services)} connected within 30 s")
        client.poll(timeout_ms=100)
        procs.check_alive()
    return agg, sup, client


def _peer_running(urls: dict[str, str]) -> Peer:
    peer = Peer(list(urls.values()))
    try:
        peer.wait_ready()
        deadline = time.monotonic() + 30
        while True:
            vals = peer.values()
            if all(vals.get(u) == 1.0 for u in urls.values()):
                return peer
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not show every target up within 30 s: {vals}")
            peer.check_alive()
            time.sleep(0.1)
    except BaseException:
        peer.close()
        raise


def _both_until(client, procs: Procs, peer: Peer, service: str, url: str, down: bool, start: float,
                timeout: float = 60.0) -> tuple[float, float]:
    """Seconds from `start` until ours and Prometheus each show the service down (or up)."""
    ours = theirs = None
    deadline = time.perf_counter() + timeout
    while ours is None or theirs is None:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{service}: not shown {'down' if down else 'up'} within {timeout:g} s "
                               f"(ours {ours}, Prometheus {theirs})")
        client.poll(timeout_ms=10)
        now = time.perf_counter()
        state = (client.services.get(service) or {}).get("state")
        if ours is None and (state in DOWN if down else state == "connected"):
            ours = now - start
        if theirs is None:
            value = peer.values().get(url)
            if value == (0.0 if down else 1.0):
                theirs = time.perf_counter() - start
        procs.check_alive()
        peer.check_alive()
    return ours, theirs


def _summ(values: list[float], unit: str) -> dict:
    return summary(values, unit)


def _ratio(ours: dict, theirs: dict) -> dict:
    """ours ÷ theirs on the median (the judged figure) and on the max (reported)."""
    def div(a, b):
        return a / b if a is not None and b else None
    return {"median": div(ours.get("median"), theirs.get("median")), "min": None,
            "max": div(ours.get("max"), theirs.get("max")), "n": min(ours.get("n", 0), theirs.get("n", 0)),
            "unit": "×", "basis": "ours ÷ theirs: median ÷ median, max ÷ max"}


def measure_peer(mode: Mode) -> Figure:
    _binaries()
    defaults = load_config(text="").services
    fakes = {n: fake_for(defaults[n]) for n in FOOTPRINT_SERVICES if n in defaults}
    fakes = {n: f for n, f in fakes.items() if f}
    kinds = [s for s in KINDS if s in fakes]
    if not kinds:
        raise NotBuilt("no probe with a fake backend")
    runs = max(FULL_RUNS if mode.name == "full" else 1, mode.detection_runs)
    fig = Figure("peer", 15, "Side by side with Prometheus blackbox_exporter",
                 target="ours ÷ peer (median): detection ≤ 1.0 and recovery ≤ 1.0 per backend kind; "
                        "idle CPU ≤ 1.0; PSS ≤ 1.5")
    rng = random.Random("peer")
    ports = {n: free_port() for n in fakes}
    direct = {n: f"http://127.0.0.1:{ports[n]}" for n in fakes}
    fake_procs = Procs("peer-fakes")
    running = {}
    proxies: dict[str, CountingProxy] = {}
    try:
        for n, (module, args) in fakes.items():
            running[n] = fake_procs.fake(module, ports[n], *args)
        for n in fakes:
            wait_port(ports[n])
            proxies[n] = CountingProxy(ports[n])

        # -- footprint and load: each tool alone, every backend behind a relay --------------
        foot = {}
        with Procs("peer-ours", config=_our_config({n: p.url for n, p in proxies.items()}, defaults)) as procs:
            agg, sup, client = _ours_running(procs, list(fakes))
            client.close()  # a connected client is not part of the always-on cost
            foot["ours"] = _observe(mode, [agg.pid, sup.pid], proxies, procs.check_alive)
            foot["ours_processes"] = len(_tree([agg.pid, sup.pid]))
        peer = _peer_running({n: p.url + CHECK_PATH[n] for n, p in proxies.items()})
        try:
            foot["theirs"] = _observe(mode, peer.pids(), proxies, peer.check_alive)
            foot["theirs_processes"] = len(_tree(peer.pids()))
        finally:
            peer.close()

        # -- detection and recovery: both tools at once, straight to the fakes ---------------
        times = {s: {"down": {"ours": [], "theirs": []}, "up": {"ours": [], "theirs": []}} for s in kinds}
        urls = {s: direct[s] + CHECK_PATH[s] for s in kinds}
        with Procs("peer-detect", config=_our_config({s: direct[s] for s in kinds}, defaults)) as procs:
            _, _, client = _ours_running(procs, kinds)
            peer = _peer_running(urls)
            try:
                for service in kinds:
                    module, args = fakes[service]
                    for i in range(-mode.warmup, runs):
                        time.sleep(rng.uniform(0, INTERVAL))
                        start = time.perf_counter()
                        fake_procs.stop(running[service], hard=True)
                        down = _both_until(client, procs, peer, service, urls[service], True, start)
                        time.sleep(rng.uniform(0, INTERVAL))
                        running[service] = fake_procs.fake(module, ports[service], *args)
                        start = listen_time(ports[service], 15.0)
                        up = _both_until(client, procs, peer, service, urls[service], False, start)
                        if i >= 0:
                            for d, pair in (("down", down), ("up", up)):
                                times[service][d]["ours"].append(pair[0])
                                times[service][d]["theirs"].append(pair[1])
            finally:
                client.close()
                peer.close()
    except BaseException:
        for p in proxies.values():
            p.close()
        fake_procs.__exit__(RuntimeError)
        raise
    for p in proxies.values():
        p.close()
    fake_procs.__exit__(None)
    return _figure(fig, mode, kinds, times, foot, runs)


def _figure(fig: Figure, mode: Mode, kinds: list[str], times: dict, foot: dict, runs: int) -> Figure:
    rows = []  # the side-by-side table: one dict per row (peer_table renders it)
    met = True

    def row(key: str, label: str, ours: dict, theirs: dict, target: float | None, unit: str) -> None:
        nonlocal met
        fig.metrics[key] = ours
        fig.baseline[key] = theirs
        r = fig.ratio[key] = _ratio(ours, theirs)
        ok = None if target is None or r["median"] is None else r["median"] <= target
        if ok is not None:
            met &= ok
        rows.append({"key": key, "label": label, "unit": unit, "ours": ours, "theirs": theirs, "ratio": r,
                     "target": target, "met": ok})

    for s in kinds:
        for d, what, tkey in (("down", "killed → shown down", "detection"), ("up", "port listening again → shown up",
                                                                              "recovery")):
            row(f"{s}_{tkey}_s", f"{KINDS[s]} ({s}) {what}", _summ(times[s][d]["ours"], "s"),
                _summ(times[s][d]["theirs"], "s"), TARGETS[tkey], "s")
    ours_w, theirs_w = foot["ours"], foot["theirs"]
    row("idle_cpu_pct", "Idle CPU, whole process tree, % of one core", _summ([w["cpu"] for w in ours_w], "%"),
        _summ([w["cpu"] for w in theirs_w], "%"), TARGETS["cpu"], "%")
    pss_ok = all(w["pss"] is not None for w in ours_w + theirs_w)
    if pss_ok:
        row("pss_mib", "Memory PSS, whole process tree (shared pages once)", _summ([w["pss"] for w in ours_w], "MiB"),
            _summ([w["pss"] for w in theirs_w], "MiB"), TARGETS["pss"], "MiB")
    row("rss_mib", f"RSS, whole process tree ({foot['ours_processes']} processes vs {foot['theirs_processes']})",
        _summ([w["rss"] for w in ours_w], "MiB"), _summ([w["rss"] for w in theirs_w], "MiB"),
        None if pss_ok else TARGETS["pss"], "MiB")
    for n in ours_w[0]["load"]:
        row(f"{n}_requests_per_min", f"Requests per minute on {n}",
            _summ([w["load"][n]["requests"] for w in ours_w], "req/min"),
            _summ([w["load"][n]["requests"] for w in theirs_w], "req/min"), None, "req/min")
        row(f"{n}_kb_per_min", f"kB per minute on {n} (both ways)",
            _summ([w["load"][n]["bytes"] / 1000 for w in ours_w], "kB/min"),
            _summ([w["load"][n]["bytes"] / 1000 for w in theirs_w], "kB/min"), None, "kB/min")
    fig.extra["table"] = rows
    fig.extra["processes"] = {"ours": foot["ours_processes"], "theirs": foot["theirs_processes"]}
    fig.met = met
    judged = [r for r in rows if r["target"] is not None]
    worst = max(judged, key=lambda r: (r["ratio"]["median"] or 0) / r["target"])
    fig.verdict = (f"{sum(bool(r['met']) for r in judged)}/{len(judged)} targets met; "
                   + "; ".join(f"{r['key'].replace('_s', '').replace('_', ' ')} {fmt(r['ratio']['median'])}×"
                               for r in judged)
                   + f" (worst {worst['key']})")
    fig.how = (f"same fakes, both tools at a {INTERVAL:g} s interval (Prometheus scrapes blackbox every "
               f"{INTERVAL:g} s); footprint and load: each tool alone, {mode.footprint_seconds:g} s idle after "
               f"{mode.footprint_warmup:g} s, {len(foot['ours'][0]['load'])} backends behind a TCP relay, psutil over "
               f"the whole process tree; detection/recovery: both watching at once, backend killed (then restarted) "
               f"at a random point, {runs} runs per backend kind; ratio ours ÷ theirs, judged on the median")
    fig.extra["table_md"] = peer_table(fig)  # report.py prints it and puts it in the README
    return fig


def peer_table(fig: Figure) -> str:
    """The side-by-side table as Markdown, for the README's Performance section."""
    rows = fig.extra.get("table") if fig.status == "ok" else None
    if not rows:
        return ""
    procs = fig.extra.get("processes", {})
    lines = ["| figure (median / max) | this project | blackbox_exporter + Prometheus | ours ÷ theirs (median / max) "
             "| target | met |", "|---|---|---|---|---|---|"]

    def pair(stat: dict, unit: str) -> str:
        return f"{fmt(stat.get('median'))} / {fmt(stat.get('max'))} {unit}" if stat.get("median") is not None else "—"

    for r in rows:
        target = f"≤ {r['target']:g}" if r["target"] is not None else "reported"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['label']} | {pair(r['ours'], r['unit'])} | {pair(r['theirs'], r['unit'])} "
                     f"| {fmt(r['ratio']['median'])} / {fmt(r['ratio']['max'])} | {target} | {met} |")
    if procs:
        lines.append("")
        lines.append(f"Processes: {procs.get('ours')} of ours (aggregator, probe supervisor, one probe per backend), "
                     f"{procs.get('theirs')} of theirs (prometheus, blackbox_exporter).")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.fig_peer [quick|tiny|full]: this figure alone, with its table
    import sys

    from .harness import MODES

    f = measure_peer(MODES[sys.argv[1] if len(sys.argv) > 1 else "quick"])
    print(f.verdict)
    print(peer_table(f))
