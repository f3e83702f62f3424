"""Figure 3: how long after a backend dies the snapshot says so.

Real fake backend process, real probe process, real aggregator, real MonitorClient. The
fake is killed hard (as a crash would), at a random moment within the probe's interval so
the poll phase is not always the same, and the time until the client's record shows
`disconnected` is taken. The baseline is what a plain poller needs at worst: interval +
timeout, read from the probe's own status record.
"""
from __future__ import annotations

import random
import time

from .harness import Figure, Mode, NotBuilt, summary
from bus.config import load as load_config

from .procs import Procs, fake_for, wait_port
from tests.fakes.base import free_port

DOWN = ("disconnected", "error")


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
            down, first, record, held = [], [], {}, []
            for i in range(-mode.warmup, mode.detection_runs):
                if fake.poll() is not None:  # restart the backend killed in the previous run
                    fake = procs.fake(module, port, *fake_args)
                    wait_port(port)
                _wait_state(procs, client, service, ("connected",), 30.0, time.perf_counter())
                record = client.services[service]
                # A probe holding ComfyUI's /ws says so in its details; it is judged on the
                # WebSocket target, a polling one on interval + timeout.
                held.append(bool((record.get("details") or {}).get("websocket")))
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
            "websocket": bool(held) and all(held)}


def measure_detection(mode: Mode) -> Figure:
    fig = Figure("detection", 3, "Detection: backend killed → snapshot shows it down",
                 target="ComfyUI (WebSocket) < 0.5 s; polled backends ≤ interval + timeout")
    backends = _backends(mode.detection_backends)
    if not backends:
        raise NotBuilt("no probe with a fake backend")
    verdicts, met = [], True
    for service, module, fake_args in backends:
        r = _detect(mode, service, module, fake_args)
        ws = r["websocket"]
        fig.metrics[f"{service}_down_s"] = summary(r["down"], "s")
        fig.metrics[f"{service}_first_change_s"] = summary(r["first"], "s")
        budget = r["interval"] + r["timeout"]
        fig.baseline[f"{service}_interval_plus_timeout_s"] = summary([budget], "s")
        fig.ratio[f"{service}_vs_interval_plus_timeout"] = summary([d / budget for d in r["down"]], "×")
        worst = max(r["down"])
        ok = worst < 0.5 if ws else worst <= budget
        met &= ok
        verdicts.append(f"{service} {'(WebSocket) ' if ws else '(polled) '}{fig.metrics[f'{service}_down_s']['median']:.2f} s "
                        f"(max {worst:.2f} s; interval+timeout {budget:g} s)")
        fig.extra[service] = {"websocket": ws, "interval_s": r["interval"], "timeout_s": r["timeout"]}
    fig.met = met
    fig.verdict = "; ".join(verdicts)
    interval_text = (f"--interval {mode.detection_interval:g}" if mode.detection_interval
                     else "default interval")
    fig.how = (f"fake backend process killed hard at a random point of the probe's cycle ({interval_text}); "
               "time until MonitorClient shows disconnected/error, via real probe and aggregator processes; "
               f"target judged on the worst of {mode.detection_runs} runs")
    return fig
