"""Optional Prometheus / OpenMetrics endpoint (`md-health run --metrics-port 9464`).

A custom collector turns the aggregator's latest state into metrics at scrape time,
named in blackbox_exporter's spirit (probe_success, durations, uptime ratios) with an
`md_health_` prefix. The list is in docs/metrics.md.

The HTTP server runs in prometheus_client's thread, so it never touches the engine: the
aggregator loop hands it a finished state dict once a second (`publish()` swaps one
reference, which is atomic in CPython), and a scrape reads only that.
"""
from __future__ import annotations

from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

QUANTILES = (("p50_ms", "0.5"), ("p95_ms", "0.95"), ("p99_ms", "0.99"))


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
        success = g("probe_success", "1 if the service is connected (usable), else 0", ["service"])
        alive = g("probe_alive", "1 if the service's probe is sending heartbeats", ["service"])
        required = g("service_required", "1 if the add-on needs this service", ["service"])
        st = g("state", "1 for the service's current state", ["service", "state"])
        since = g("since_change_seconds", "seconds since the service's state last changed", ["service"])
        # A summary per window: quantiles from the window's DDSketch (1 % relative error),
        # _count and _sum over the successful requests.
        dur = Metric("md_health_probe_duration_seconds",
                     "response time of successful requests over the window", "summary")
        checks = g("window_requests", "requests (checks) seen in the window", ["service", "window"])
        ok_ratio = g("success_ratio", "share of successful requests in the window", ["service", "window"])
        uptime = g("uptime_ratio", "time connected / time with a known state, over the window", ["service", "window"])
        unknown = g("unknown_ratio", "share of the window with no live probe (state unknown)", ["service", "window"])
        queue = g("queue_depth", "jobs in the backend's queue", ["service"])
        tokens = CounterMetricFamily("md_health_llm_tokens", "language-model tokens used, by direction",
                                     labels=["model", "direction"])
        requests = CounterMetricFamily("md_health_llm_requests", "language-model requests", labels=["model"])
        cost = CounterMetricFamily("md_health_llm_cost_usd", "estimated spend from the [prices] table",
                                   labels=["model"])
        for name, r in sorted(services.items()):
            success.add_metric([name], 1.0 if r.get("state") == "connected" else 0.0)
            alive.add_metric([name], 1.0 if r.get("probe_alive") else 0.0)
            required.add_metric([name], 1.0 if r.get("required") else 0.0)
            st.add_metric([name, str(r.get("state", "unknown"))], 1.0)
            if r.get("since_change_s") is not None:
                since.add_metric([name], float(r["since_change_s"]))
            for window, w in (r.get("windows") or {}).items():
                labels = {"service": name, "window": window}
                ok = round((w.get("count") or 0) * (w.get("success_rate") or 0.0))
                for key, q in QUANTILES:
                    if w.get(key) is not None:
                        dur.add_sample(dur.name, {**labels, "quantile": q}, w[key] / 1000.0)
                dur.add_sample(dur.name + "_count", labels, float(ok))
                dur.add_sample(dur.name + "_sum", labels, (w.get("avg_ms") or 0.0) * ok / 1000.0)
                checks.add_metric([name, window], float(w.get("count") or 0))
                for fam, key in ((ok_ratio, "success_rate"), (uptime, "uptime"), (unknown, "unknown_ratio")):
                    if w.get(key) is not None:
                        fam.add_metric([name, window], float(w[key]))
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
        yield from (success, alive, required, st, since, dur, checks, ok_ratio, uptime, unknown, queue,
                    tokens, requests, cost, alerts, persisted)


def serve(port: int, collector: EngineCollector, addr: str = "127.0.0.1"):
    """Start the HTTP endpoint on loopback (it carries no secrets, but nothing needs it remotely
    by default). Returns the server (call .shutdown() to stop)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
