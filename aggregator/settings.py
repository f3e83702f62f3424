"""The aggregator's config sections: [aggregator], [alerts], [prices] (docs/metrics.md).

Validated with bus/config.py's checkers, so a bad value is a ConfigError naming the key
and line, never a traceback. Every key has a default; `Settings()` needs no file (the
engine and the benchmarks construct it without any I/O).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.config import DEFAULT_SERVICES, Config, ConfigError, _bool, _fail, _positive, _text, _validate_table

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: Any) -> float:
    """'10s', '5m', '24h', '7d' (or a number of seconds) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"must be a duration like 10s, 5m, 24h or 7d; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def label(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        # "24h" rather than "1d": the seed's and the UI's name for the day window
        if seconds >= _UNITS[unit] * (2 if unit == "d" else 1) and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


DEFAULT_TIERS = ("1s:5m", "10s:1h", "1m:24h")


def _tiers(v: Any) -> list[tuple[float, float]]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError('must be a list of "step:keep" strings, e.g. ["1s:5m", "10s:1h", "1m:24h", "1h:7d"]')
    out = []
    for item in v:
        step_s, _, keep_s = item.partition(":")
        step, keep = parse_duration(step_s), parse_duration(keep_s)
        if keep < step or keep % step:
            raise ValueError(f"{item!r}: keep must be a whole number of steps")
        if keep / step > 100_000:
            raise ValueError(f"{item!r}: more than 100000 buckets; use a coarser step")
        out.append((step, keep))
    for (s0, k0), (s1, k1) in zip(out, out[1:]):
        if s1 <= s0 or s1 % out[0][0] or k1 <= k0:
            raise ValueError("tiers must go from fine to coarse: each step a multiple of the first, "
                             "each keep longer than the one before")
    return out


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise ValueError("must be a port number 1-65535 (0: off)")
    return v


def _flush(v: Any) -> float:
    v = _positive(v)
    if v > 10:
        raise ValueError("must be at most 10 seconds (history may lose at most 10 s on a crash)")
    return v


def _pct(v: Any) -> float:
    v = _positive(v)
    if v > 100:
        raise ValueError("must be a percentage between 0 and 100")
    return v


def _non_negative(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError("must be a number of at least 0")
    return float(v)


def _max_services(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
        raise ValueError("must be a whole number of services between 1 and 100000")
    return v


def _log_interval(v: Any) -> float:
    v = parse_duration(v)
    if not 1 <= v <= 86400:
        raise ValueError("must be between 1s and 24h")
    return v


AGGREGATOR_KEYS = {"tiers": _tiers, "data_dir": _text, "flush_interval": _flush,
                   "metrics_port": _port, "persist": _bool, "forget_after": parse_duration,
                   "max_services": _max_services, "reject_log_interval": _log_interval}

# Services the aggregator keeps (configured ones always count in and are never refused).
# Each costs about 160 KB with the default tiers and is re-sent every second, so this bounds
# memory (about 85 MB of services), the per-second publish and a late joiner's reply (about
# 0.7 MB at 5 m). A studio runs 5-20 services; the project is measured at 500 (the soak,
# bench figures 7 and 12), so the cap sits just above that scale rather than below it.
MAX_SERVICES = 512
# A kind of rejected frame is logged at most once per this long; the rest are summed up.
REJECT_LOG_INTERVAL = 60.0

# A service that is not configured ([services.*] and the built-in ones) is forgotten after
# this long without events. A day: the default tiers' longest window, so by then nothing it
# sent is left in them, while a probe stopped for a night is still there in the morning.
FORGET_AFTER = 86400.0

# One rule set per service: [alerts.default] applies to all, [alerts.<service>] overrides.
ALERT_KEYS = {
    "raise_after_s": _non_negative,  # N: the condition must hold this long before raising
    "clear_after_s": _non_negative,  # M: the clear condition must hold this long before clearing
    "p95_ms": _positive,             # raise when the 5 m p95 is above this
    "p95_clear_ms": _positive,       # ... clear when below this (default: p95_ms)
    "success_pct": _pct,             # raise when the 5 m success rate is below this
    "success_clear_pct": _pct,
    "queue": _positive,              # raise when the queue depth is above this
    "queue_clear": _non_negative,
    "down_s": _positive,             # raise when disconnected/error for longer than this
    "key_invalid": _bool,            # raise when an LLM provider's key is invalid
    "enabled": _bool,
}
DEFAULT_ALERTS = {"raise_after_s": 30.0, "clear_after_s": 30.0, "success_pct": 90.0,
                  "down_s": 60.0, "key_invalid": True, "enabled": True}

PRICE_KEYS = {"input": _non_negative, "output": _non_negative}  # USD per million tokens


@dataclass
class Settings:
    tiers: list[tuple[float, float]] = field(default_factory=lambda: _tiers(list(DEFAULT_TIERS)))
    data_dir: str = ""
    flush_interval: float = 5.0
    metrics_port: int = 0
    persist: bool = True
    forget_after: float = FORGET_AFTER
    max_services: int = MAX_SERVICES
    reject_log_interval: float = REJECT_LOG_INTERVAL
    configured: frozenset = frozenset(DEFAULT_SERVICES)  # services that are never forgotten
    alerts: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": dict(DEFAULT_ALERTS)})
    prices: dict[str, dict[str, float]] = field(default_factory=dict)

    def alert_rules(self, service: str) -> dict[str, Any]:
        rules = dict(self.alerts.get("default", {}))
        rules.update(self.alerts.get(service, {}))
        return rules

    def resolved_data_dir(self) -> Path:
        """MD_HEALTH_DATA_DIR, else [aggregator] data_dir, else the platform's user data dir."""
        env = os.environ.get("MD_HEALTH_DATA_DIR")
        if env:
            return Path(env)
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        from platformdirs import user_data_dir

        return Path(user_data_dir("movie-director-health"))


def from_config(cfg: Config) -> Settings:
    text = ""
    if cfg.path and cfg.path.exists():
        try:
            text = cfg.path.read_text(encoding="utf-8")
        except OSError:
            text = ""
    where = cfg.path
    s = Settings(configured=frozenset(cfg.services))
    agg = _validate_table(cfg.sections.get("aggregator", {}), AGGREGATOR_KEYS, "aggregator", text, where)
    for key, value in agg.items():
        setattr(s, key, value)

    alerts = cfg.sections.get("alerts", {})
    if not isinstance(alerts, dict):
        raise _fail(text, where, "", "alerts", "must be a table of [alerts.default] / [alerts.<service>] tables")
    for name, table in alerts.items():
        if name in ALERT_KEYS:
            raise _fail(text, where, "alerts", name,
                        "belongs in a per-service table: [alerts.default] or [alerts.<service>]")
        rules = _validate_table(table, ALERT_KEYS, f"alerts.{name}", text, where)
        base = {**DEFAULT_ALERTS, **rules} if name == "default" else {**s.alerts["default"], **rules}
        for lo_key, hi_key in (("p95_clear_ms", "p95_ms"), ("queue_clear", "queue")):
            if lo_key in base and hi_key in base and base[lo_key] > base[hi_key]:
                raise _fail(text, where, f"alerts.{name}", lo_key, f"must not be above {hi_key} ({base[hi_key]:g})")
        if "success_clear_pct" in base and "success_pct" in base and base["success_clear_pct"] < base["success_pct"]:
            raise _fail(text, where, f"alerts.{name}", "success_clear_pct",
                        f"must not be below success_pct ({base['success_pct']:g})")
        if name == "default":
            s.alerts["default"] = base
        else:
            s.alerts[name] = rules

    prices = cfg.sections.get("prices", {})
    if not isinstance(prices, dict):
        raise _fail(text, where, "", "prices", 'must be a table of models: [prices."gpt-4o"] input = 2.5, output = 10')
    for model, table in prices.items():
        p = _validate_table(table, PRICE_KEYS, f"prices.{model}", text, where)
        if set(p) != {"input", "output"}:
            raise _fail(text, where, f"prices.{model}", "input" if "input" not in p else "output",
                        "is missing: give both input and output, in USD per million tokens")
        s.prices[model] = p
    return s


def load_settings(path: str | Path | None = None) -> Settings:
    from bus.config import load

    return from_config(load(path))


__all__ = ["Settings", "from_config", "load_settings", "parse_duration", "label", "ConfigError"]
