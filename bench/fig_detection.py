"""Figures 3 and 13: how long after a backend dies the snapshot says so, and how long after
it comes back (its port listening again) the snapshot shows it connected.

Real fake backend process, real probe process, real aggregator, real MonitorClient. The
fake is killed hard (as a crash would), at a random moment within the probe's interval so
the poll phase is not always the same, and the time until the client's record shows
`disconnected` is taken; the baseline is what a plain poller needs at worst, interval +
timeout, read from the probe's own status record. For recovery the fake is restarted at a
random moment after a short or a long outage (so the full check's backoff is in play); the
baseline is the backoff pause in force then, which a probe without the liveness channel's
cheap connect could have to wait.
"""
from __future__ import annotations

import random
import socket
import time

from .harness import Figure, Mode, NotBuilt, summary
from bus.config import load as load_config

from .procs import Procs, fake_for, wait_port
from tests.fakes.base import free_port

DOWN = ("disconnected", "error")
DEATH_TARGET = 0.5  # s, issue 13: every local backend's death shown this soon
RECOVERY_TARGET = 1.0  # s, issue 13: shown up this soon after its port listens, whatever the backoff


def _backends(names: tuple[str, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(service, fake module, fake args): ComfyUI (held WebSocket) and the polled Gradio
    backends the mode asks for; each only if its fake and probe exist."""
    services = load_config(text="").services
    out = []
    for name in names:
        found = fake_for(services[name]) if name in services else None
        if found:
            out.append((name, found[0], found[1]))
    return out


def _wait_state(procs: Procs, client, service: str, states: tuple[str, ...], timeout: float,
                start: float) -> tuple[float, float | None]:
    """Seconds from `start` until the record is in `states`; also when it first left 'connected'."""
    first_change = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        client.poll(timeout_ms=20)
        rec = client.services.get(service) or {}
        state = rec.get("state")
        if first_change is None and state != "connected":
            first_change = time.perf_counter() - start
        if state in states:
            return time.perf_counter() - start, first_change
        procs.check_alive()
    raise RuntimeError(f"{service} did not become {'/'.join(states)} within {timeout:g} s")


def _detect(mode: Mode, service: str, module: str, fake_args: tuple[str, ...]) -> dict:
    rng = random.Random(f"detect-{service}")  # a kill phase sequence of its own per backend
    port = free_port()
    interval_args = ["--interval", str(mode.detection_interval)] if mode.detection_interval else []
    with Procs(f"detect-{service}") as procs:
        procs.aggregator()
        fake = procs.fake(module, port, *fake_args)
        wait_port(port)
        procs.probe(service, "--url", f"http://127.0.0.1:{port}", *interval_args)
        client = procs.client("bench-detect")
        try:
            procs.wait_synced(client)
            down, first, record, held, channel = [], [], {}, [], []
            for i in range(-mode.warmup, mode.detection_runs):
                if fake.poll() is not None:  # restart the backend killed in the previous run
                    fake = procs.fake(module, port, *fake_args)
                    wait_port(port)
                _wait_state(procs, client, service, ("connected",), 30.0, time.perf_counter())
                record = client.services[service]
                # A probe holding ComfyUI's /ws says so in its details; it is judged on the
                # WebSocket target, a polling one on interval + timeout.
                held.append(bool((record.get("details") or {}).get("websocket")))
                channel.append((record.get("details") or {}).get("liveness") == "held")
                time.sleep(rng.uniform(0, float(record.get("interval") or mode.detection_interval or 2.0)))
                start = time.perf_counter()
                procs.stop(fake, hard=True)
                took, changed = _wait_state(procs, client, service, DOWN, 60.0, start)
                if i >= 0:
                    down.append(took)
                    first.append(changed if changed is not None else took)
        finally:
            client.close()
    # The record carries the probe's settings (status body); fall back to the config defaults
    # the probe was started with, for an aggregator that does not pass them through.
    defaults = load_config(text="").services.get(service, {"interval": 2.0, "timeout": 2.0})
    interval = float(record.get("interval") or mode.detection_interval or defaults["interval"])
    timeout = float(record.get("timeout") or defaults["timeout"])
    return {"down": down, "first": first, "interval": interval, "timeout": timeout,
            "websocket": bool(held) and all(held), "liveness": bool(channel) and all(channel)}


def measure_detection(mode: Mode) -> Figure:
    fig = Figure("detection", 3, "Detection: backend killed → snapshot shows it down",
                 target=f"every local backend < {DEATH_TARGET:g} s (median; held WebSocket or liveness channel)")
    backends = _backends(mode.detection_backends)
    if not backends:
        raise NotBuilt("no probe with a fake backend")
    verdicts, met = [], True
    for service, module, fake_args in backends:
        r = _detect(mode, service, module, fake_args)
        ws = r["websocket"]
        fig.metrics[f"{service}_down_s"] = summary(r["down"], "s")
        fig.metrics[f"{service}_first_change_s"] = summary(r["first"], "s")
        # Same-run baseline: what a plain poller needs at worst, interval + timeout.
        budget = r["interval"] + r["timeout"]
        fig.baseline[f"{service}_interval_plus_timeout_s"] = summary([budget], "s")
        fig.ratio[f"{service}_vs_interval_plus_timeout"] = summary([d / budget for d in r["down"]], "×")
        median, worst = fig.metrics[f"{service}_down_s"]["median"], max(r["down"])
        ok = median < DEATH_TARGET
        met &= ok
        how = "WebSocket" if ws else ("liveness channel" if r["liveness"] else "polled")
        verdicts.append(f"{service} ({how}) {median:.2f} s (max {worst:.2f} s; interval+timeout {budget:g} s)")
        fig.extra[service] = {"websocket": ws, "liveness": r["liveness"], "interval_s": r["interval"],
                              "timeout_s": r["timeout"], "down_s": r["down"]}
    fig.met = met
    fig.verdict = "; ".join(verdicts)
    fig.how = (f"fake backend process killed hard (kill -9) at a random point of the probe's cycle "
               f"({_interval_text(mode)}); time until MonitorClient shows disconnected/error, via real probe and "
               f"aggregator processes; {mode.detection_runs} runs per backend after {mode.warmup} warm-up; "
               "target judged on the median, max reported")
    return fig


def _interval_text(mode: Mode) -> str:
    return f"--interval {mode.detection_interval:g}" if mode.detection_interval else "default interval"


def listen_time(port: int, timeout: float) -> float:
    """perf_counter() when the port first accepts a connection (probed every 2 ms)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.perf_counter()
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def _recover(mode: Mode, service: str, module: str, fake_args: tuple[str, ...]) -> dict:
    """Kill the backend, leave it down for a short or a long outage (long: the full check's
    backoff has grown to 4 intervals or more), restart it at a random moment, and time from
    its port listening to the snapshot showing connected."""
    rng = random.Random(f"recover-{service}")
    port = free_port()
    interval_args = ["--interval", str(mode.detection_interval)] if mode.detection_interval else []
    short, long_ = [], []
    backoff_short, backoff_long = [], []
    with Procs(f"recover-{service}") as procs:
        procs.aggregator()
        fake = procs.fake(module, port, *fake_args)
        wait_port(port)
        procs.probe(service, "--url", f"http://127.0.0.1:{port}", *interval_args)
        client = procs.client("bench-recover")
        try:
            procs.wait_synced(client)
            _wait_state(procs, client, service, ("connected",), 60.0, time.perf_counter())
            interval = float(client.services[service].get("interval") or mode.detection_interval or 2.0)
            for i in range(-mode.warmup, mode.detection_runs):
                is_long = i >= 0 and i % 2 == 0  # long, short, long, ...: a single run is a long one
                procs.stop(fake, hard=True)
                _wait_state(procs, client, service, DOWN, 60.0, time.perf_counter())
                outage = (5 * interval if is_long else 0.5) + rng.uniform(0, 2 * interval)
                end = time.perf_counter() + outage
                while time.perf_counter() < end:  # keep the client's view current meanwhile
                    client.poll(timeout_ms=20)
                record = client.services.get(service) or {}
                pause = float((record.get("details") or {}).get("retry_in_s") or 0.0)
                fake = procs.fake(module, port, *fake_args)
                listening = listen_time(port, 30.0)
                took, _ = _wait_state(procs, client, service, ("connected",), 60.0, listening)
                if i >= 0:
                    (long_ if is_long else short).append(took)
                    (backoff_long if is_long else backoff_short).append(pause)
        finally:
            client.close()
    return {"short": short, "long": long_, "backoff_short": backoff_short, "backoff_long": backoff_long,
            "interval": interval}


def measure_recovery(mode: Mode) -> Figure:
    fig = Figure("recovery", 13, "Recovery: backend port listening again → snapshot shows it up",
                 target=f"every local backend < {RECOVERY_TARGET:g} s (median), after short and long outages")
    backends = _backends(mode.detection_backends)
    if not backends:
        raise NotBuilt("no probe with a fake backend")
    verdicts, met = [], True
    for service, module, fake_args in backends:
        r = _recover(mode, service, module, fake_args)
        both = r["short"] + r["long"]
        fig.metrics[f"{service}_recovery_s"] = summary(both, "s")
        for kind in ("short", "long"):  # a one-run mode has only the long outage
            if r[kind]:
                fig.metrics[f"{service}_after_{kind}_outage_s"] = summary(r[kind], "s")
        # Same-run baseline: the full check's backoff pause in force when the backend came
        # back (`retry_in_s`): what a probe without the cheap connect could wait, at worst.
        pauses = r["backoff_short"] + r["backoff_long"]
        fig.baseline[f"{service}_backoff_pause_s"] = summary(pauses, "s")
        fig.ratio[f"{service}_vs_backoff_pause"] = summary([t / p for t, p in zip(both, pauses) if p], "×")
        median = fig.metrics[f"{service}_recovery_s"]["median"]
        met &= median < RECOVERY_TARGET
        long_pause = max(r["backoff_long"]) if r["backoff_long"] else 0.0
        verdicts.append(f"{service} {median:.2f} s (max {max(both):.2f} s; backoff then up to {long_pause:g} s)")
        fig.extra[service] = {**r}
    fig.met = met
    fig.verdict = "; ".join(verdicts)
    fig.how = (f"fake backend process killed hard, left down for a short (0.5 s + up to 2 intervals) or a long "
               f"outage (5 to 7 intervals, so the check's backoff is in play), restarted at a random moment "
               f"({_interval_text(mode)}); time from its port accepting a connection to MonitorClient showing "
               f"connected, via real probe and aggregator processes; {mode.detection_runs} runs per backend "
               f"(long and short alternating) after {mode.warmup} warm-up; target judged on the median, max reported")
    return fig
