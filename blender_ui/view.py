"""What the panels show, computed from aggregator records. Pure Python, no bpy.

Every value the contracts allow to be missing (a field the aggregator does not send yet,
`None` for "unknowable") is shown as an em dash, never as 0.
"""
from __future__ import annotations

import functools
import math
from typing import Any

DASH = "—"
NB = "\u00a0"  # between a number and its unit, so a wrapped line never splits "1.3 GB"

# The four backends of the story, in display order; any other service the monitor reports
# is shown after them under its own name.
BACKENDS = (("comfyui", "ComfyUI"), ("wan2gp", "Wan2GP"), ("rvc", "RVC"), ("audioldm", "AudioLDM"))
LLM = "llm"
RANGES = ("5m", "1h", "24h")
RANGE_SECONDS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}

# state -> (icon, words, tooltip). Icon and words together: never colour alone.
STATES: dict[str, tuple[str, str, str]] = {
    "connected": ("CHECKMARK", "Connected", "The last check succeeded"),
    "connecting": ("TIME", "Connecting", "Checking, or confirming a change of state"),
    "disconnected": ("CANCEL", "Disconnected", "The service does not answer"),
    "error": ("ERROR", "Error", "The service answers, but not as expected (wrong app, bad key)"),
    "loading": ("SORTTIME", "Loading model", "The service answers, but its model is still loading: not ready yet"),
    "sleeping": ("HIDE_ON", "Sleeping (wakes on use)",
                 "The model was unloaded after idle time; the next request wakes it (healthy, not down)"),
    "degraded": ("SEQ_LUMA_WAVEFORM", "Degraded",
                 "The service answers, but its response time or queue is over the alert threshold"),
    "unknown": ("QUESTION", "Unknown", "The probe watching this service has stopped reporting"),
    "offline": ("INTERNET_OFFLINE", "Monitor offline", "No heartbeat from the monitor: state unknown"),
    "missing": ("DOT", "Not monitored", "The monitor has no probe for this service (see its config)"),
}

# States in which a service answers. Sleeping is healthy (it wakes on use) and degraded
# answers slowly: both count as up. Loading answers but is not ready: never up, never down.
UP = ("connected", "sleeping", "degraded")
ANSWERING = UP + ("loading",)

OVERALL: dict[str, tuple[str, str]] = {
    "GREEN": ("SEQUENCE_COLOR_04", "All services up"),
    "YELLOW": ("SEQUENCE_COLOR_03", "Not all ready"),
    "RED": ("SEQUENCE_COLOR_01", "Required service down"),
    "OFFLINE": ("INTERNET_OFFLINE", "Monitor offline"),
}
# The state whose picture icon stands for each light (green check, yellow clock, ...).
OVERALL_STATE = {"GREEN": "connected", "YELLOW": "connecting", "RED": "disconnected", "OFFLINE": "offline"}
OVERALL_RULE = ("Red: a required service is down. Yellow: a service is loading its model or degraded, "
                "or an optional one is down or connecting. Green: every monitored service is up "
                "(a sleeping model counts as up: it wakes on use)")

# Response-time thresholds for the coloured bars (p95, milliseconds).
FAST_MS = 500.0
SLOW_MS = 2000.0
LEVEL_ICON = {"good": "SEQUENCE_COLOR_04", "warn": "SEQUENCE_COLOR_03", "bad": "SEQUENCE_COLOR_01", "none": "DOT"}

# What probes/llm.py reads (set them where the monitor runs), plus a local Ollama.
LLM_ENV_HINT = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY + AZURE_OPENAI_ENDPOINT",
                "OLLAMA_HOST (local models)")


def label_of(name: str) -> str:
    return dict(BACKENDS).get(name, "Language models" if name == LLM else name)


def service_names(records: dict[str, Any]) -> list[str]:
    """The four backends first, then whatever else the monitor reports (not the LLM)."""
    known = [n for n, _ in BACKENDS]
    return known + sorted(n for n in records if n not in known and n != LLM)


def is_required(name: str, record: dict[str, Any] | None, override: str = "AUTO") -> bool:
    """The add-on's preference wins; AUTO takes what the monitor's config says."""
    if override == "REQUIRED":
        return True
    if override == "OPTIONAL":
        return False
    return bool(record and record.get("required"))


def state_of(record: dict[str, Any] | None, online: bool) -> str:
    if not online:
        return "offline"
    if not record:
        return "missing"
    state = record.get("state", "unknown")
    return state if state in STATES else "unknown"


def overall(rows: list[tuple[str, str, bool]], online: bool) -> tuple[str, str]:
    """rows: (label, state, required). Returns (light, reason)."""
    if not online:
        return "OFFLINE", "No heartbeat from the monitor"
    down_required = [label for label, state, req in rows if req and state not in ANSWERING]
    if down_required:
        return "RED", "Not connected: " + ", ".join(down_required)
    loading = [label for label, state, _req in rows if state == "loading"]
    degraded = [label for label, state, _req in rows if state == "degraded"]
    down = [label for label, state, req in rows if not req and state not in ANSWERING + ("missing",)]
    parts = [f"{what}: {', '.join(labels)}" for what, labels in (
        ("Not ready (loading its model)", loading), ("Degraded", degraded), ("Not connected (optional)", down))
        if labels]
    if parts:
        return "YELLOW", "; ".join(parts)
    return "GREEN", OVERALL["GREEN"][1]


def overall_words(light: str, reason: str) -> str:
    """The light's few words: for yellow, what it is about."""
    if light != "YELLOW":
        return OVERALL.get(light, OVERALL["OFFLINE"])[1]
    if reason.startswith("Not ready"):
        return "Not ready"
    return "Degraded" if reason.startswith("Degraded") else "Optional service down"


def overall_short(light: str, rows: list[tuple[str, bool]]) -> str:
    """The status bar's few words. rows: (state, required)."""
    if light == "OFFLINE":
        return "AI backends: monitor offline"
    down = sum(1 for state, req in rows if state not in ANSWERING + ("missing",) or (req and state == "missing"))
    loading = sum(1 for state, _req in rows if state == "loading")
    parts = [f"{down} down"] * bool(down) + [f"{loading} not ready"] * bool(loading)
    return "AI backends: " + (", ".join(parts) if parts else "all up")


def plain(text: str) -> str:
    """Texts from probes are written for terminals and docs: drop their markup (code
    backticks, bold stars) so a label reads as a sentence."""
    return text.replace("`", "").replace("**", "")


@functools.lru_cache(maxsize=512)
def wrap(text: str, chars: int) -> tuple[str, ...]:
    """Lines of at most `chars` characters, broken between words; a word longer than a
    line (a path, a URL) is broken at its separators, never mid-word where avoidable.
    Cached: the panels wrap the same texts on every redraw."""
    import textwrap

    lines = []
    for line in textwrap.wrap(text, max(8, chars), break_long_words=False, break_on_hyphens=True) or [""]:
        while len(line) > chars:
            cut = max(line.rfind(sep, 0, chars) for sep in "/\\:._-,")
            cut = cut + 1 if cut > chars // 3 else chars
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return tuple(lines)


def job_time_text(record: dict[str, Any] | None) -> str:
    jobs = (record or {}).get("job_time")
    if not isinstance(jobs, dict) or not _num(jobs.get("count")):
        return DASH
    return f"p50 {ms(jobs.get('p50_ms'))}, p95 {ms(jobs.get('p95_ms'))} ({count(jobs.get('count'))} jobs)"


def job_time_short(record: dict[str, Any] | None) -> str:
    jobs = (record or {}).get("job_time")
    if not isinstance(jobs, dict) or not _num(jobs.get("count")):
        return DASH
    return f"p95 {ms(jobs.get('p95_ms'))}"


# Time spent alive but not plainly up, or down, in a window: shown only where it is not zero,
# so a service that was up all along gets no extra rows.
STATE_TIME_ROWS = (("down_s", "Down"), ("degraded_s", "Degraded"), ("loading_s", "Loading"),
                   ("sleeping_s", "Sleeping"))


def state_time_rows(stats: dict[str, Any] | None) -> list[tuple[str, str]]:
    stats = stats or {}
    return [(name, duration(stats[key])) for key, name in STATE_TIME_ROWS
            if _num(stats.get(key)) and stats[key] >= 1]


# -- formatting ---------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ago(ts: float | None, now: float) -> str:
    if not _num(ts) or ts <= 0:
        return "never"
    s = max(0, int(now - ts))
    if s < 90:
        return f"{s}{NB}s ago"
    if s < 90 * 60:
        return f"{s // 60}{NB}min ago"
    return f"{s // 3600}{NB}h ago"


def duration(seconds: Any) -> str:
    if not _num(seconds):
        return DASH
    s = max(0, int(seconds))
    if s < 90:
        return f"{s}{NB}s"
    if s < 90 * 60:
        return f"{s // 60}{NB}min"
    return f"{s / 3600:.1f}{NB}h"


def ms(v: Any) -> str:
    if not _num(v):
        return DASH
    return f"{v / 1000:.2f}{NB}s" if v >= 1000 else f"{v:.0f}{NB}ms"


def pct(v: Any, digits: int = 1) -> str:
    return f"{v * 100:.{digits}f}{NB}%" if _num(v) else DASH


def count(v: Any) -> str:
    return str(int(v)) if _num(v) else DASH


def size(v: Any) -> str:
    if not _num(v):
        return DASH
    for unit in ("B", "KB", "MB", "GB"):
        if abs(v) < 1024 or unit == "GB":
            return f"{v:.1f}{NB}{unit}" if unit != "B" else f"{int(v)}{NB}B"
        v /= 1024
    return DASH


def money(v: Any) -> str:
    return f"${v:.4f}" if _num(v) and v < 1 else (f"${v:.2f}" if _num(v) else DASH)


def level(p95_ms: Any) -> str:
    if not _num(p95_ms):
        return "none"
    return "good" if p95_ms < FAST_MS else ("warn" if p95_ms < SLOW_MS else "bad")


def fraction(v: Any) -> float:
    return min(1.0, max(0.0, float(v))) if _num(v) else 0.0


def text_bar(frac: float, width: int = 12) -> str:
    """A bar made of characters, for Blender before 4.0 (no `layout.progress`)."""
    filled = round(fraction(frac) * width)
    return "█" * filled + "░" * (width - filled)


# -- record readers -------------------------------------------------------------------------
def stats_for(record: dict[str, Any] | None, rng: str) -> dict[str, Any]:
    """The figures for a time range: `windows[rng]` if the aggregator sends it, else the
    5-minute `stats` for "5m", else nothing (shown as dashes)."""
    if not record:
        return {}
    windows = record.get("windows")
    if isinstance(windows, dict) and isinstance(windows.get(rng), dict):
        return windows[rng]
    if rng == "5m" and isinstance(record.get("stats"), dict):
        return record["stats"]
    return {}


def uptime_for(record: dict[str, Any] | None, rng: str) -> Any:
    if not record:
        return None
    up = record.get("uptime")
    if isinstance(up, dict) and rng in up:
        return up[rng]
    return stats_for(record, rng).get("uptime")


def queue_text(record: dict[str, Any] | None, reason: bool = True) -> str:
    """"1 running, 3 waiting"; a part the backend cannot tell is left out ("2 waiting":
    Gradio counts only what waits, docs/metrics.md), and with neither known the probe's note
    says why (Wan2GP keeps its own queue)."""
    if not record:
        return DASH
    details = record.get("details") or {}
    running, waiting = details.get("queue_running"), details.get("queue_waiting", details.get("queue_pending"))
    if "queue_running" in details or "queue_waiting" in details:
        if not _num(running) and not _num(waiting):
            note = plain(str(details.get("queue_note") or ""))
            return f"unknown ({note})" if note and reason else "unknown"
        return ", ".join([f"{count(running)} running"] * _num(running) + [f"{count(waiting)} waiting"] * _num(waiting))
    q = record.get("queue")
    if isinstance(q, dict) and _num(q.get("current")):
        return f"{count(q.get('current'))} now, peak {count(q.get('peak'))}"
    return DASH


def resources_lines(record: dict[str, Any] | None) -> list[str]:
    """One line per part (process, host, VRAM), so each wraps on its own."""
    # The probe puts it in details; the aggregator's record also has it at the top level.
    res = (record or {}).get("resources") or ((record or {}).get("details") or {}).get("resources")
    if not isinstance(res, dict):
        return [f"Resources: {DASH}"]
    parts = []
    proc = res.get("process")
    if isinstance(proc, dict):
        parts.append(f"Process: CPU {_fmt_cpu(proc.get('cpu_percent'))}, RAM {size(proc.get('rss_bytes'))}")
    host = res.get("host")
    if isinstance(host, dict):
        parts.append(f"Host: CPU {_fmt_cpu(host.get('cpu_percent'))}, RAM {size(host.get('ram_used'))}"
                     f" of {size(host.get('ram_total'))}")
    if _num(res.get("vram_used_bytes")):
        parts.append(f"VRAM: {size(res['vram_used_bytes'])}")
    return parts or [f"Resources: {DASH}"]


def resources_text(record: dict[str, Any] | None) -> str:
    lines = resources_lines(record)
    return DASH if lines == [f"Resources: {DASH}"] else "; ".join(lines)


def _fmt_cpu(v: Any) -> str:
    return f"{v:.0f}{NB}%" if _num(v) else DASH


def devices_lines(record: dict[str, Any] | None) -> list[str]:
    devices = ((record or {}).get("details") or {}).get("devices")
    if not isinstance(devices, list):
        return []
    out = []
    for k, d in enumerate(devices):
        if isinstance(d, dict):
            out.append(f"{'GPU' if len(devices) > 1 else 'Device'} {k + 1}{' (primary)' if k == 0 and len(devices) > 1 else ''}: "
                       f"{device_name(d.get('name'))}, VRAM {size(d.get('vram_free'))} free of "
                       f"{size(d.get('vram_total'))}")
    return out


def device_name(name: Any) -> str:
    """ComfyUI names a device "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync": keep the
    model, drop the torch device id and the allocator."""
    text = str(name or "").split(" : ")[0].strip()
    head, _, rest = text.partition(" ")
    if ":" in head and rest:
        text = rest.strip()
    return text or "device"


def capabilities_text(record: dict[str, Any] | None) -> str:
    caps = [str(c).replace("_", " ") for c in ((record or {}).get("capabilities") or [])]
    return ", ".join(caps) if caps else DASH


# Provider states that need the artist: shown in the alert colour (loading and sleeping are fine).
PROVIDER_TROUBLE = frozenset({"invalid", "unreachable", "spend_limit", "failed", "overloaded"})


def llm_view(record: dict[str, Any] | None, active_override: str = "") -> dict[str, Any]:
    details = (record or {}).get("details") or {}
    providers = details.get("providers") if isinstance(details.get("providers"), dict) else {}
    configured = {n: p for n, p in providers.items() if isinstance(p, dict) and p.get("configured")}
    models: list[str] = []
    counts = []
    for p in configured.values():
        models += [str(m) for m in (p.get("models") or [])]
        if _num(p.get("model_count")):
            counts.append(int(p["model_count"]))
    return {
        "monitored": record is not None,
        "configured": bool(configured),
        "providers": [(n, str(p.get("state", "not_configured")), str(p.get("error") or p.get("readiness_reason") or ""))
                      for n, p in sorted(providers.items()) if isinstance(p, dict)],
        "active_model": active_override or details.get("active_model") or DASH,
        "model_count": sum(counts) if counts else (len(models) if models else None),
        "models": sorted(set(models)),
    }


def llm_usage(record: dict[str, Any] | None) -> dict[str, Any]:
    usage = (record or {}).get("usage")
    if not isinstance(usage, dict):
        return {"total_tokens": None, "cost_usd": None, "models": []}
    rows = []
    for model, u in sorted((usage.get("by_model") or {}).items()):
        if isinstance(u, dict):
            rows.append((model, (u.get("tokens_in") or 0) + (u.get("tokens_out") or 0)
                         if _num(u.get("tokens_in")) or _num(u.get("tokens_out")) else None,
                         u.get("latency_p50_ms"), u.get("cost_usd"), u.get("requests")))
    return {"total_tokens": usage.get("total_tokens"), "cost_usd": usage.get("cost_usd"), "models": rows}


HISTORY_COLUMNS = ("p50_ms", "p95_ms", "success_rate", "up_ratio")


def history_series(history: dict[str, Any], name: str, rng: str) -> dict[str, list]:
    """The aggregator's history for one service if it covers this range, else {}: its
    columns and a `t` list for the charts. The aggregator sends one start time per service,
    `t0`, and the reply's `step_s` (bucket k starts at t0 + k * step_s); gaps are None."""
    if not isinstance(history, dict) or history.get("range") != rng:
        return {}
    series = (history.get("services") or {}).get(name)
    step = history.get("step_s")
    if not isinstance(series, dict) or not _num(series.get("t0")) or not _num(step) or step <= 0:
        return {}
    cols = {k: list(series[k]) for k in HISTORY_COLUMNS if isinstance(series.get(k), list)}
    n = max((len(v) for v in cols.values()), default=0)
    return {"t": [series["t0"] + k * step for k in range(n)], **cols}



# -- cards: every text a panel shows for one service, built once per record ---------------------
def card(record: dict[str, Any] | None, rng: str) -> dict[str, Any]:
    """What both panels show for one service record over a range, as ready texts. The
    timer builds it when the record changes (the client replaces a record on each update),
    so a redraw, which comes far more often (hover, scroll, the moving "ago" texts), only
    lays out strings. The raw p95 and success rate stay numbers: the alert thresholds
    (preferences) are compared at draw time."""
    stats = stats_for(record, rng)
    p95, rate, up = stats.get("p95_ms"), stats.get("success_rate"), uptime_for(record, rng)
    return {
        "p95_ms": p95 if _num(p95) else None,
        "success_rate": rate if _num(rate) else None,
        "figures": (("p95", ms(p95)), ("Average", ms(stats.get("avg_ms"))), ("Success", pct(rate)),
                    ("Uptime", pct(up, 2)), ("Queue", queue_text(record, reason=False)),
                    ("Job time", job_time_short(record)), *state_time_rows(stats)),
        "compare": {"p95": ms(p95), "success": pct(rate), "uptime": pct(up, 1), "uptime_short": pct(up, 0)},
        "resources": tuple(resources_lines(record)),
        "capabilities": capabilities_text(record),
        "url": f"URL: {(record or {}).get('url') or DASH}",
        "details": (*(devices_lines(record) or [f"Devices: {DASH}"]), f"Queue: {queue_text(record)}",
                    f"Job time: {job_time_text(record)}"),
        "llm": llm_card(record),
    }


def llm_card(record: dict[str, Any] | None) -> dict[str, Any]:
    """The language-model texts of both panels. The active model is the monitor's; the
    add-on's preference, when set, is put in front of it at draw time."""
    llm, usage = llm_view(record), llm_usage(record)
    return {
        "configured": llm["configured"],
        "active_model": llm["active_model"],
        "model_count": count(llm["model_count"]),
        "models": tuple(llm["models"]),
        "providers": tuple((f"{name}: {state.replace('_', ' ')}" + (f" ({plain(error)})" if error else ""),
                            state in PROVIDER_TROUBLE) for name, state, error in llm["providers"]),
        "usage": f"Tokens used: {count(usage['total_tokens'])}, cost {money(usage['cost_usd'])}",
        "usage_models": tuple(f"  {model}: {count(tokens)} tokens, {ms(latency)}, {money(cost)}"
                              for model, tokens, latency, cost, _req in usage["models"]),
    }
