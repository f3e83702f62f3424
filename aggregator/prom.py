"""Optional Prometheus / OpenMetrics endpoint (`md-health run --metrics-port 9464`).

A custom collector turns the aggregator's latest state into metrics at scrape time,
named in blackbox_exporter's spirit (probe_success, durations, uptime ratios) with an
`md_health_` prefix. The list is in docs/metrics.md.

The HTTP server runs in prometheus_client's thread, so it never touches the engine: the
aggregator loop hands it a finished state dict once a second (`publish()` swaps one
reference, which is atomic in CPython), and a scrape reads only that.

Types keep Prometheus's promises. A counter only grows, so only figures that only grow
are counters (LLM tokens, requests and spend, totals that the engine only adds to). The
latency and request figures are the engine's sliding windows: they fall as samples age
out, so they are gauges with the window in their name and labels, and the latency
quantiles are a summary without `_count` and `_sum`. Counting each request once for a
monotone total needs the event stream, and this collector sees only a 1 Hz snapshot of
windows in which arrivals and departures are already netted out; a "total" built from
those would be a guess. The state is a StateSet: every known state 0 or 1, so a
change drops the old state's series to 0 instead of leaving it stale.
"""
from __future__ import annotations

from typing import Any

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric,
                                   StateSetMetricFamily)

from bus.protocol import STATE_DEGRADED, STATE_UNKNOWN, STATES

from .tiers import CLASS_NAMES

QUANTILES = (("p50_ms", "0.5"), ("p95_ms", "0.95"), ("p99_ms", "0.99"))
USABLE = ("connected", STATE_DEGRADED)  # degraded answers, only slowly or with a long queue


class EngineCollector:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {"services": {}, "alerts": [], "persistence": {}}

    def publish(self, state: dict[str, Any]) -> None:
        self.state = state

    def describe(self):  # no fixed description: metrics follow the services seen
        return []

    def collect(self):
        state = self.state
        services = state.get("services", {})
        g = lambda name, doc, labels: GaugeMetricFamily(f"md_health_{name}", doc, labels=labels)  # noqa: E731
        success = g("probe_success", "1 if the service is connected or degraded (usable), else 0", ["service"])
        alive = g("probe_alive", "1 if the service's probe is sending heartbeats", ["service"])
        required = g("service_required", "1 if the add-on needs this service", ["service"])
        st = StateSetMetricFamily("md_health_state", "the service's state: 1 for the current one, 0 for the others",
                                  labels=["service"])
        since = g("since_change_seconds", "seconds since the service's state last changed", ["service"])
        # Window quantiles are a summary's quantiles (client libraries compute those over a
        # sliding window too), with no _count or _sum: those must be totals since start.
        dur = Metric("md_health_probe_duration_seconds", "response time of successful requests over the window: "
                     "nearest-rank quantiles from the window's DDSketch (1 % relative error)", "summary")
        mean = g("window_mean_duration_seconds", "mean response time of successful requests over the window",
                 ["service", "window"])
        checks = g("window_requests", "requests (checks) seen in the window", ["service", "window"])
        ok_ratio = g("success_ratio", "share of successful requests in the window", ["service", "window"])
        uptime = g("uptime_ratio", "time up (connected or degraded) / time up or down, over the window (loading, "
                   "sleeping and unknown time count as neither)", ["service", "window"])
        unknown = g("unknown_ratio", "share of the window with no live probe (state unknown)", ["service", "window"])
        shares = g("state_seconds", "seconds of the window spent in each share: up, down, unknown, loading, sleeping, "
                   "degraded (they add up to the time the window has seen)", ["service", "window", "share"])
        queue = g("queue_depth", "jobs in the backend's queue", ["service"])
        tokens = CounterMetricFamily("md_health_llm_tokens", "language-model tokens used, by direction",
                                     labels=["model", "direction"])
        requests = CounterMetricFamily("md_health_llm_requests", "language-model requests", labels=["model"])
        cost = CounterMetricFamily("md_health_llm_cost_usd", "estimated spend from the [prices] table",
                                   labels=["model"])
        for name, r in sorted(services.items()):
            success.add_metric([name], 1.0 if r.get("state") in USABLE else 0.0)
            alive.add_metric([name], 1.0 if r.get("probe_alive") else 0.0)
            required.add_metric([name], 1.0 if r.get("required") else 0.0)
            now_state = r.get("state") if r.get("state") in STATES else STATE_UNKNOWN
            st.add_metric([name], {state: state == now_state for state in STATES})
            if r.get("since_change_s") is not None:
                since.add_metric([name], float(r["since_change_s"]))
            for window, w in (r.get("windows") or {}).items():
                for key, q in QUANTILES:
                    if w.get(key) is not None:
                        dur.add_sample(dur.name, {"service": name, "window": window, "quantile": q}, w[key] / 1000.0)
                if w.get("avg_ms") is not None:
                    mean.add_metric([name, window], w["avg_ms"] / 1000.0)
                checks.add_metric([name, window], float(w.get("count") or 0))
                for fam, key in ((ok_ratio, "success_rate"), (uptime, "uptime"), (unknown, "unknown_ratio")):
                    if w.get(key) is not None:
                        fam.add_metric([name, window], float(w[key]))
                for share in CLASS_NAMES:
                    if w.get(f"{share}_s") is not None:
                        shares.add_metric([name, window, share], float(w[f"{share}_s"]))
            current = (r.get("queue") or {}).get("current")
            if current is not None:
                queue.add_metric([name], float(current))
            for model, u in ((r.get("usage") or {}).get("by_model") or {}).items():
                tokens.add_metric([model, "in"], float(u["tokens_in"]))
                tokens.add_metric([model, "out"], float(u["tokens_out"]))
                requests.add_metric([model], float(u["requests"]))
                if u.get("cost_usd") is not None:
                    cost.add_metric([model], float(u["cost_usd"]))
        alerts = g("alert_active", "1 while an alert is raised", ["service", "alert"])
        for a in state.get("alerts", []):
            alerts.add_metric([a["service"], a["name"]], 1.0)
        persisted = g("history_persisted", "1 if history is written to disk, 0 if kept in memory only", [])
        persisted.add_metric([], 1.0 if (state.get("persistence") or {}).get("mode") == "sqlite" else 0.0)
        yield from (success, alive, required, st, since, dur, mean, checks, ok_ratio, uptime, unknown, shares, queue,
                    tokens, requests, cost, alerts, persisted)


def serve(port: int, collector: EngineCollector, addr: str = "127.0.0.1"):
    """Start the HTTP endpoint on loopback (it carries no secrets, but nothing needs it remotely
    by default). Returns the server (call .shutdown() to stop)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
