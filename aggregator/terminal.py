"""Human-readable rendering of the state for `status` and `watch` (plain text, no curses).

What is rendered is shaped for the stream it goes to (stdout unless told): ANSI colours
only on a terminal, and plain characters for the glyphs a stream cannot encode (a Windows
console or a pipe with a cp1252 code page), so printing never raises UnicodeEncodeError.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

STATE_WORDS = {
    "connected": ("\033[32m", "● Connected"),
    "connecting": ("\033[33m", "◌ Connecting"),
    "disconnected": ("\033[31m", "✖ Disconnected"),
    "error": ("\033[35m", "▲ Error"),
    "unknown": ("\033[90m", "? Unknown"),
    "loading": ("\033[33m", "◔ Loading"),
    "sleeping": ("\033[36m", "☾ Sleeping"),
    "degraded": ("\033[38;5;208m", "◑ Degraded"),
}
RESET = "\033[0m"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _ago(ts: float, now: float) -> str:
    if not ts:
        return "never"
    secs = max(0, now - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


SPARKS = "▁▂▃▄▅▆▇█"
# The plain stand-in of every glyph used here, for a stream that cannot encode it.
PLAIN = str.maketrans({"●": "*", "◌": "o", "✖": "x", "▲": "!", "—": "-", "…": "~", "◔": "%", "☾": "z", "◑": "/",
                       **dict(zip(SPARKS, "_.:-=+*#"))})


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def printable(text: str, stream: TextIO | None = None) -> str:
    """`text` as `stream` can show it: if any character cannot be encoded in the stream's
    encoding, every glyph becomes its plain stand-in (a consistent screen) and whatever else
    is left unencodable (a backend's error text) becomes '?'."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
        return text
    except UnicodeEncodeError:
        pass
    except LookupError:  # an encoding name Python does not know
        encoding = "ascii"
    return text.translate(PLAIN).encode(encoding, "replace").decode(encoding)


def _fit(text: str, width: int) -> str:
    """The text, or its start and an ellipsis: a cut version number ("gradio 3.23.") misleads."""
    return text if len(text) <= width else text[:width - 1] + "…"


def sparkline(values: list[float | None], width: int = 20, lo: float | None = None,
              hi: float | None = None) -> str:
    """The last `width` values as block characters; gaps (None) as spaces."""
    values = list(values)[-width:]
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    lo = min(known) if lo is None else lo
    hi = max(known) if hi is None else hi
    span = (hi - lo) or 1.0
    return "".join(" " if v is None else SPARKS[min(7, max(0, int((v - lo) / span * 7.999)))] for v in values)


def _series(history: dict[str, Any], name: str, key: str, width: int) -> list:
    """One history column, regrouped into `width` points (max within each group, so spikes show)."""
    values = ((history or {}).get("services") or {}).get(name, {}).get(key) or []
    if len(values) <= width:
        return values
    size = len(values) / width
    out = []
    for i in range(width):
        chunk = [v for v in values[int(i * size):int((i + 1) * size)] if v is not None]
        out.append((min(chunk) if key in ("success_rate", "up_ratio") else max(chunk)) if chunk else None)
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _queue(details: dict[str, Any]) -> str:
    """Running/waiting jobs ("1/3"); "—" for a side the backend cannot tell (docs/metrics.md)."""
    run, wait = details.get("queue_running"), details.get("queue_waiting")
    if not _is_num(run) and not _is_num(wait):
        depth = details.get("queue_depth")
        return str(depth) if _is_num(depth) else "—"
    return f"{run if _is_num(run) else '—'}/{wait if _is_num(wait) else '—'}"


def _devices(record: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (record.get("details") or {}).get("devices")
    return [d for d in devices if isinstance(d, dict) and d.get("type") != "cpu"][:16] if isinstance(devices, list) else []


def render(services: dict[str, dict[str, Any]], *, online: bool, color: bool | None = None,
           now: float | None = None, header: str = "", history: dict[str, Any] | None = None,
           alerts: list[dict[str, Any]] | None = None, persistence: dict[str, Any] | None = None,
           stream: TextIO | None = None) -> str:
    """The status table (and trends, alerts) for `stream`; colour defaults to "is a terminal"."""
    now = time.time() if now is None else now
    color = is_terminal(stream) if color is None else color
    lines = []
    if header:
        lines.append(header)
    if not online:
        lines.append("Monitor offline: no heartbeat from the aggregator. Start it with `make run`.")
    cols = f"{'SERVICE':<10} {'STATE':<15} {'NEED':<8} {'VERSION':<14} {'RUN/WAIT':>8} {'P50':>7} {'P95':>7} {'OK%':>5} {'CHECKED':>9}  DETAIL"
    lines.append(cols)
    for name in sorted(services):
        r = services[name]
        tint, word = STATE_WORDS.get(r.get("state", "unknown"), ("", r.get("state", "?")))
        state = f"{tint}{word:<15}{RESET}" if color else f"{word:<15}"
        st = r.get("stats", {})
        rate = st.get("success_rate")
        queue = _queue(r.get("details", {}))
        detail = r.get("error") or ", ".join(r.get("capabilities", [])[:4])
        lines.append(
            f"{name:<10} {state} {'required' if r.get('required') else 'optional':<8} "
            f"{_fit(r.get('version') or '—', 14):<14} {queue:>8} "
            f"{_ms(st.get('p50_ms')):>7} {_ms(st.get('p95_ms')):>7} "
            f"{('—' if rate is None else f'{rate * 100:.0f}'):>5} {_ago(r.get('last_check', 0), now):>9}  {detail}")
    if not services:
        lines.append("(no services reported yet)")
    gpus = [(name, d) for name in sorted(services) for d in _devices(services[name])]
    if gpus:
        lines.append("")
        lines.append(f"{'GPUS':<10} {'DEVICE':<40} VRAM FREE")
        for name, d in gpus:
            total, free = d.get("vram_total"), d.get("vram_free")
            vram = f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB" if _is_num(total) and _is_num(free) else "—"
            lines.append(f"{name:<10} {_fit(str(d.get('name') or '?'), 40):<40} {vram}")
    if history and services:
        rng = history.get("range", "")
        lines.append("")
        lines.append(f"{'TRENDS ' + rng:<10} {'P95 (' + rng + ')':<22} {'SUCCESS':<22} {'UPTIME':<8} UNKNOWN")
        for name in sorted(services):
            w = (services[name].get("windows") or {}).get(rng) or {}
            up, unk = w.get("uptime"), w.get("unknown_ratio")
            lines.append(f"{name:<10} {sparkline(_series(history, name, 'p95_ms', 20)):<22} "
                         f"{sparkline(_series(history, name, 'success_rate', 20), lo=0.0, hi=1.0):<22} "
                         f"{_pct(up):<8} {_pct(unk)}")
    if alerts:
        lines.append("")
        lines.extend(f"ALERT {a.get('message', '')}" for a in alerts)
    if persistence and persistence.get("mode") == "memory":
        lines.append("")
        lines.append(f"History is kept in memory only: {persistence.get('reason', '')}")
    return printable("\n".join(lines), stream)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f}%"


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


COMPARE_ROWS = (
    ("state", lambda r, w: r.get("state")),
    ("required", lambda r, w: "yes" if r.get("required") else "no"),
    ("probe alive", lambda r, w: "yes" if r.get("probe_alive") else "no"),
    ("checks", lambda r, w: w.get("count")),
    ("avg ms", lambda r, w: w.get("avg_ms")),
    ("p50 ms", lambda r, w: w.get("p50_ms")),
    ("p95 ms", lambda r, w: w.get("p95_ms")),
    ("p99 ms", lambda r, w: w.get("p99_ms")),
    ("min ms", lambda r, w: w.get("min_ms")),
    ("max ms", lambda r, w: w.get("max_ms")),
    ("success", lambda r, w: _pct(w.get("success_rate"))),
    ("req/min", lambda r, w: w.get("rpm")),
    ("errors", lambda r, w: ", ".join(f"{k}:{n}" for k, n in (w.get("errors_by_kind") or {}).items()) or "—"),
    ("uptime", lambda r, w: _pct(w.get("uptime"))),
    ("unknown", lambda r, w: _pct(w.get("unknown_ratio"))),
    ("queue now", lambda r, w: (r.get("queue") or {}).get("current")),
    ("queue peak", lambda r, w: w.get("queue_peak")),
    ("job p95 ms", lambda r, w: (r.get("job_time") or {}).get("p95_ms")),
    ("since change", lambda r, w: None if r.get("since_change_s") is None else f"{r['since_change_s']:.0f}s"),
)


def render_compare(services: dict[str, dict[str, Any]], window: str = "5m", stream: TextIO | None = None) -> str:
    """Every service side by side, one metric per row, for one window."""
    names = sorted(services)
    if not names:
        return "(no services reported yet)"
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'window ' + window:<14}" + "".join(f"{n:>{width}}" for n in names)]
    for label, get in COMPARE_ROWS:
        cells = []
        for n in names:
            r = services[n]
            w = (r.get("windows") or {}).get(window) or {}
            cells.append(f"{_num(get(r, w))[:width - 1]:>{width}}")
        lines.append(f"{label:<14}" + "".join(cells))
    usage = [(n, services[n].get("usage")) for n in names if services[n].get("usage")]
    for n, u in usage:
        lines.append("")
        lines.append(f"{n} usage: {u.get('total_tokens', 0)} tokens, est. ${u.get('cost_usd') or 0:.4f}")
        for model, m in (u.get("by_model") or {}).items():
            cost = "unpriced" if m.get("cost_usd") is None else f"${m['cost_usd']:.4f}"
            lines.append(f"  {model:<28} in {m['tokens_in']:>9} out {m['tokens_out']:>9} req {m['requests']:>6} "
                         f"p95 {_num(m.get('latency_p95_ms'))} ms  {cost}")
    return printable("\n".join(lines), stream)


def render_alerts(alerts: list[dict[str, Any]], now: float | None = None, stream: TextIO | None = None) -> str:
    if not alerts:
        return "No active alerts."
    now = time.time() if now is None else now
    lines = [f"{'SERVICE':<10} {'ALERT':<12} {'SINCE':>9}  MESSAGE"]
    for a in sorted(alerts, key=lambda a: (a.get("service", ""), a.get("name", ""))):
        lines.append(f"{a.get('service', ''):<10} {a.get('name', ''):<12} {_ago(a.get('since', 0), now):>9}  "
                     f"{a.get('message', '')}")
    return printable("\n".join(lines), stream)
