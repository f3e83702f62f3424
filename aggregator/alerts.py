"""Threshold alerts with hysteresis (pure: values and times in, raise/clear decisions out).

A rule raises after its condition held for `raise_after_s` (N) without a break, and
clears after its clear condition held for `clear_after_s` (M). The clear condition may
use a lower threshold than the raise one (p95_clear_ms, success_clear_pct, queue_clear),
so a value hovering at the threshold cannot flap. "down" uses down_s as its N.
"""
from __future__ import annotations

from typing import Any

ALERT_NAMES = ("p95", "success", "queue", "down", "key_invalid")


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


def conditions(rules: dict[str, Any], record: dict[str, Any], now: float) -> list[tuple]:
    """(name, metric, value, threshold, bad, good, raise_after, message) for every rule that applies."""
    out = []
    n, m = rules.get("raise_after_s", 30.0), rules.get("clear_after_s", 30.0)
    stats = record.get("stats") or {}
    svc = record["service"]
    if "p95_ms" in rules:
        hi = rules["p95_ms"]
        lo = rules.get("p95_clear_ms", hi)
        v = stats.get("p95_ms")
        out.append(("p95", "p95_ms", v, hi, v is not None and v > hi, v is None or v <= lo, n,
                    f"{svc}: p95 latency {_fmt(v)} ms is above {hi:g} ms"))
    if "success_pct" in rules:
        lo = rules["success_pct"] / 100.0
        hi = rules.get("success_clear_pct", rules["success_pct"]) / 100.0
        v = stats.get("success_rate")
        out.append(("success", "success_rate", v, lo, v is not None and v < lo, v is None or v >= hi, n,
                    f"{svc}: success rate {_pct(v)} is below {lo * 100:g} %"))
    if "queue" in rules:
        hi = rules["queue"]
        lo = rules.get("queue_clear", hi)
        v = (record.get("queue") or {}).get("current")
        out.append(("queue", "queue_depth", v, hi, v is not None and v > hi, v is None or v <= lo, n,
                    f"{svc}: queue depth {v} is above {hi:g}"))
    if "down_s" in rules:
        state = record.get("state")
        down = state in ("disconnected", "error")
        since = record.get("since_change_s") or 0.0
        out.append(("down", "state", state, rules["down_s"], down, state == "connected", 0.0 if down else n,
                    f"{svc} is {state} for {since:.0f} s (limit {rules['down_s']:g} s)"))
        # "down longer than T": the condition is "down and since_change >= T"; raise at once then.
        out[-1] = out[-1][:4] + (down and since >= rules["down_s"],) + out[-1][5:]
    if rules.get("key_invalid"):
        providers = ((record.get("details") or {}).get("providers") or {})
        if isinstance(providers, dict) and providers:
            bad = sorted(p for p, info in providers.items() if isinstance(info, dict) and info.get("state") == "invalid")
            out.append(("key_invalid", "provider_state", ",".join(bad) or None, None, bool(bad), not bad, 0.0,
                        f"{svc}: API key rejected by {', '.join(bad)}" if bad else f"{svc}: API keys valid"))
    return [(name, metric, v, thr, bad, good, ra, m, msg) for (name, metric, v, thr, bad, good, ra, msg) in out]


def _fmt(v):
    return "—" if v is None else f"{v:.0f}"


def _pct(v):
    return "—" if v is None else f"{v * 100:.1f} %"
