"""Threshold alerts with hysteresis (pure: values and times in, raise/clear decisions out).

A rule raises after its condition held for `raise_after_s` (N) without a break, and
clears after its clear condition held for `clear_after_s` (M). The clear condition may
use a lower threshold than the raise one (p95_clear_ms, success_clear_pct, queue_clear),
so a value hovering at the threshold cannot flap.

An unknown value is evidence of nothing: it is neither bad nor good, so it starts neither
timer and breaks both. A value is unknown when it is None (no requests in the window) and
whenever the service's probe is dead (its window still holds samples from before it died,
and those age out without saying anything about now). So an active alert whose value
becomes unknown stays active until a real value has been good for M seconds (or its
service expires), and an unknown value never raises one.

"down" is timed by the record's `down_for_s` (seconds since the state class became
down; disconnected <-> error flips do not reset it, see docs/metrics.md), and raises as
soon as that reaches down_s. Only disconnected and error are down: a service that is
loading or sleeping answers (it is alive, only not ready), so it never raises "down", and
it counts, like connected and degraded, towards clearing one.
"""
from __future__ import annotations

from typing import Any

ALERT_NAMES = ("p95", "success", "queue", "down", "key_invalid")
ANSWERING_STATES = ("connected", "degraded", "loading", "sleeping")  # the service is not down


class Alert:
    __slots__ = ("service", "name", "metric", "threshold", "active", "since", "value", "message",
                 "bad_since", "good_since")

    def __init__(self, service: str, name: str, metric: str) -> None:
        self.service, self.name, self.metric = service, name, metric
        self.threshold: float | None = None
        self.active = False
        self.since = 0.0
        self.value: Any = None
        self.message = ""
        self.bad_since: float | None = None   # when the raise condition started to hold
        self.good_since: float | None = None  # when the clear condition started to hold

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "name": self.name, "metric": self.metric, "message": self.message,
                "since": self.since, "value": self.value, "threshold": self.threshold}

    def event(self) -> tuple[str, dict[str, Any]]:
        return (f"alert.{self.service}.{self.name}",
                {"service": self.service, "name": self.name, "active": self.active, "message": self.message,
                 "value": self.value, "threshold": self.threshold})

    def step(self, now: float, bad: bool, good: bool, raise_after: float, clear_after: float) -> bool:
        """Advance the hysteresis. Returns True when the alert was raised or cleared."""
        self.bad_since = (self.bad_since if self.bad_since is not None else now) if bad else None
        self.good_since = (self.good_since if self.good_since is not None else now) if good else None
        if not self.active and self.bad_since is not None and now - self.bad_since >= raise_after:
            self.active, self.since = True, now
            return True
        if self.active and self.good_since is not None and now - self.good_since >= clear_after:
            self.active, self.since = False, now
            return True
        return False


def inputs(record: dict[str, Any]) -> tuple | None:
    """Everything conditions() reads from a record, so records with equal inputs give equal
    conditions; None while they also depend on time (a down service's down_for_s grows on its
    own). The engine evaluates a service's rules again only when these or the rules changed,
    or one of its alerts' timers is due."""
    if record.get("down_for_s") is not None:
        return None
    stats = record.get("stats") or {}
    return (record["service"], stats.get("p95_ms"), stats.get("success_rate"), (record.get("queue") or {}).get("current"),
            record.get("state"), record.get("error_kind"), (record.get("details") or {}).get("providers"))


def due(alert: Alert, raise_after: float, clear_after: float, now: float) -> bool:
    """Would step() raise or clear this alert now if its condition stayed as it is?"""
    if alert.active:
        return alert.good_since is not None and now - alert.good_since >= clear_after
    return alert.bad_since is not None and now - alert.bad_since >= raise_after


def conditions(rules: dict[str, Any], record: dict[str, Any], now: float) -> list[tuple]:
    """(name, metric, value, threshold, bad, good, raise_after, clear_after, message) for every
    rule that applies. bad and good are both False while the value is unknown."""
    out = []
    n, m = rules.get("raise_after_s", 30.0), rules.get("clear_after_s", 30.0)
    stats = record.get("stats") or {}
    svc = record["service"]
    stale = record.get("error_kind") == "probe_dead"  # the figures are from before the probe died

    def measured(v):
        return None if stale else v

    if "p95_ms" in rules:
        hi = rules["p95_ms"]
        lo = rules.get("p95_clear_ms", hi)
        v = measured(stats.get("p95_ms"))
        out.append(("p95", "p95_ms", v, hi, v is not None and v > hi, v is not None and v <= lo, n,
                    f"{svc}: p95 latency {_fmt(v)} ms is above {hi:g} ms"))
    if "success_pct" in rules:
        lo = rules["success_pct"] / 100.0
        hi = rules.get("success_clear_pct", rules["success_pct"]) / 100.0
        v = measured(stats.get("success_rate"))
        out.append(("success", "success_rate", v, lo, v is not None and v < lo, v is not None and v >= hi, n,
                    f"{svc}: success rate {_pct(v)} is below {lo * 100:g} %"))
    if "queue" in rules:
        hi = rules["queue"]
        lo = rules.get("queue_clear", hi)
        v = measured((record.get("queue") or {}).get("current"))
        out.append(("queue", "queue_depth", v, hi, v is not None and v > hi, v is not None and v <= lo, n,
                    f"{svc}: queue depth {v} is above {hi:g}"))
    if "down_s" in rules:
        state, limit = record.get("state"), rules["down_s"]
        down_for = record.get("down_for_s")  # None unless down (a dead probe's service is unknown, not down)
        text = f"{svc} is {state}" + (f" for {down_for:.0f} s" if down_for is not None else "")
        # "Down longer than T" is its own timer, so it raises at once when that holds.
        out.append(("down", "state", state, limit, down_for is not None and down_for >= limit,
                    state in ANSWERING_STATES, 0.0, f"{text} (limit {limit:g} s)"))
    if rules.get("key_invalid"):
        providers = ((record.get("details") or {}).get("providers") or {})
        if isinstance(providers, dict) and providers:
            bad = sorted(p for p, info in providers.items() if isinstance(info, dict) and info.get("state") == "invalid")
            out.append(("key_invalid", "provider_state", ",".join(bad) or None, None, bool(bad) and not stale,
                        not bad and not stale, 0.0,
                        f"{svc}: API key rejected by {', '.join(bad)}" if bad else f"{svc}: API keys valid"))
    return [(name, metric, v, thr, bad, good, ra, m, msg) for (name, metric, v, thr, bad, good, ra, msg) in out]


def _fmt(v):
    return "—" if v is None else f"{v:.0f}"


def _pct(v):
    return "—" if v is None else f"{v * 100:.1f} %"
