"""Human-readable rendering of the state for `status` and `watch` (plain text, no curses)."""
from __future__ import annotations

import time
from typing import Any

STATE_WORDS = {
    "connected": ("\033[32m", "● Connected"),
    "connecting": ("\033[33m", "◌ Connecting"),
    "disconnected": ("\033[31m", "✖ Disconnected"),
    "error": ("\033[35m", "▲ Error"),
    "unknown": ("\033[90m", "? Unknown"),
}
RESET = "\033[0m"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _ago(ts: float, now: float) -> str:
    if not ts:
        return "never"
    secs = max(0, now - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


def render(services: dict[str, dict[str, Any]], *, online: bool, color: bool = True,
           now: float | None = None, header: str = "") -> str:
    now = time.time() if now is None else now
    lines = []
    if header:
        lines.append(header)
    if not online:
        lines.append("Monitor offline: no heartbeat from the aggregator. Start it with `make run`.")
    cols = f"{'SERVICE':<10} {'STATE':<15} {'NEED':<8} {'VERSION':<12} {'QUEUE':>5} {'P50':>7} {'P95':>7} {'OK%':>5} {'CHECKED':>9}  DETAIL"
    lines.append(cols)
    for name in sorted(services):
        r = services[name]
        tint, word = STATE_WORDS.get(r.get("state", "unknown"), ("", r.get("state", "?")))
        state = f"{tint}{word:<15}{RESET}" if color else f"{word:<15}"
        st = r.get("stats", {})
        rate = st.get("success_rate")
        queue = r.get("details", {}).get("queue_depth")
        detail = r.get("error") or ", ".join(r.get("capabilities", [])[:4])
        lines.append(
            f"{name:<10} {state} {'required' if r.get('required') else 'optional':<8} "
            f"{(r.get('version') or '—')[:12]:<12} {('—' if queue is None else queue):>5} "
            f"{_ms(st.get('p50_ms')):>7} {_ms(st.get('p95_ms')):>7} "
            f"{('—' if rate is None else f'{rate * 100:.0f}'):>5} {_ago(r.get('last_check', 0), now):>9}  {detail}")
    if not services:
        lines.append("(no services reported yet)")
    return "\n".join(lines)
