"""Figure 14: what local authentication (CURVE on loopback, `md-health auth init`) costs on ingest.

Two aggregators run side by side in the same bench run: one plain, one whose user has
switched local authentication on (keys in `curve/` next to its config, found exactly as a
user's processes find them). The same probe-shaped burst goes into each through real
sockets. One run is plain, auth, auth, plain (ABBA: a load that rises or falls through the
run hits both sides alike), and its ratio is auth's events per second over plain's, each
over its two bursts.

The target, ratio ≥ 0.7: CURVE encrypts and authenticates every frame in libzmq's I/O
threads at both ends, which on a 2-core machine compete with the aggregator's own thread.
What is left is still thousands of times what a studio's probes send (a few events a
second each).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import zmq

from bus import security

from .fig_bus import MarkedSink, probe_traffic
from .harness import Figure, Mode, repeat, summary
from .procs import Procs


@contextmanager
def _as_user_of(procs: Procs):
    """Build sockets here as that Procs' user would: its config folder, so its keys or none.
    (secure() reads the environment when a socket is made; the socket keeps what it got.)"""
    saved = {k: os.environ.get(k) for k in ("MD_HEALTH_CONFIG", security.ENV_DIR)}
    os.environ["MD_HEALTH_CONFIG"] = procs.env["MD_HEALTH_CONFIG"]
    os.environ.pop(security.ENV_DIR, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sink(procs: Procs) -> MarkedSink:
    procs.env.pop(security.ENV_DIR, None)  # the keys (or none) next to its config decide, nothing inherited
    procs.aggregator()
    with _as_user_of(procs):
        return MarkedSink(procs)


def _abba(plain: MarkedSink, auth: MarkedSink, frames: list[bytes]) -> tuple[float, float]:
    """(plain, auth) events per second of one run, each the harmonic mean of two bursts (events ÷ total time)."""
    first = plain.burst(frames)
    a1, a2 = auth.burst(frames), auth.burst(frames)
    last = plain.burst(frames)
    return 2 / (1 / first + 1 / last), 2 / (1 / a1 + 1 / a2)


def measure_auth_ingest(mode: Mode) -> Figure:
    fig = Figure("auth_ingest", 14, "Ingest with local CURVE authentication on", target="ratio ≥ 0.7",
                 how=(f"{mode.ingest_events:,} probe-shaped events blasted into two `python -m aggregator run`, one "
                      "plain and one with local authentication on (`md-health auth init`: CURVE on loopback, keys "
                      "in the user's config folder); rate = events ÷ time until an end marker comes back; "
                      "each run plain, auth, auth, plain; ratio = auth ÷ plain"))
    frames = probe_traffic(mode.ingest_events)
    with Procs("auth-plain") as plain_procs, Procs("auth-curve") as auth_procs:
        security.init(Path(auth_procs.env["MD_HEALTH_CONFIG"]).parent / "curve")
        plain = _sink(plain_procs)
        auth = _sink(auth_procs)
        try:
            if (plain.pub.mechanism, auth.pub.mechanism) != (zmq.NULL, zmq.CURVE):
                raise RuntimeError("the two sides did not get the security they were set up for")
            pairs = repeat(mode, lambda i: _abba(plain, auth, frames))
        finally:
            plain.close()
            auth.close()
    plain_rates = [p for p, _ in pairs]
    auth_rates = [a for _, a in pairs]
    fig.metrics["events_per_s"] = summary(auth_rates, "events/s")
    fig.baseline["events_per_s"] = summary(plain_rates, "events/s")
    fig.ratio["auth_vs_plain"] = summary([a / p for p, a in pairs], "×")
    ratio = fig.ratio["auth_vs_plain"]["median"]
    fig.met = ratio >= 0.7
    fig.verdict = (f"{fig.metrics['events_per_s']['median']:,.0f} events/s with auth = {ratio:.2f}× the "
                   f"{fig.baseline['events_per_s']['median']:,.0f} events/s without")
    return fig
