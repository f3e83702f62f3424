"""The stats engine: events and a clock in, snapshots out. No sockets, no time.time().

Everything here is a pure function of the messages ingested and the times the injected
clock returned, so every figure can be tested to the millisecond with a fake clock.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from bus.protocol import STATE_UNKNOWN, Message

PROBE_DEAD_AFTER_BEATS = 3  # missed heartbeats before a probe counts as dead
WINDOW = 1000  # response times kept for the rolling statistics


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class ServiceState:
    __slots__ = ("name", "status", "last_check", "last_change", "src", "durations", "ok", "failed",
                 "first_seen", "dead")

    def __init__(self, name: str) -> None:
        self.name = name
        self.status: dict[str, Any] = {"state": STATE_UNKNOWN}
        self.last_check = 0.0
        self.last_change = 0.0
        self.src = ""
        self.durations: deque[float] = deque(maxlen=WINDOW)
        self.ok = 0
        self.failed = 0
        self.first_seen = 0.0
        self.dead = False  # probe silent: shown as unknown, while `status` keeps its last report


class Engine:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.services: dict[str, ServiceState] = {}
        self.probes: dict[str, tuple[float, float, list[str]]] = {}  # src -> (last beat, interval, services)

    def _service(self, name: str) -> ServiceState:
        svc = self.services.get(name)
        if svc is None:
            svc = self.services[name] = ServiceState(name)
        return svc

    # -- input ------------------------------------------------------------------------
    def ingest(self, msg: Message) -> set[str]:
        """Apply one decoded event. Returns the names of services whose record changed."""
        kind = msg.kind
        now = self.clock()
        if kind == "status":
            return self._on_status(msg, now)
        if kind == "timing":
            svc = self._service(msg.body["service"])
            if msg.body["ok"]:
                svc.ok += 1
                svc.durations.append(float(msg.body["duration_ms"]))
            else:
                svc.failed += 1
            return {svc.name}
        if kind == "heartbeat":
            services = msg.body.get("services") or []
            services = [s for s in services if isinstance(s, str)]
            self.probes[msg.src] = (now, float(msg.body["interval"]), services)
            return set()  # tick() notices a probe coming back
        return set()

    def _on_status(self, msg: Message, now: float) -> set[str]:
        body = msg.body
        svc = self._service(body["service"])
        previous = svc.status.get("state")
        svc.status = body
        if svc.src != msg.src:
            svc.src, svc.first_seen = msg.src, now
        svc.last_check = now
        if body["state"] != previous:
            svc.last_change = now
        return {svc.name}

    def _probe_dead(self, src: str, now: float, first_seen: float | None = None) -> bool:
        beat = self.probes.get(src)
        if beat is None:
            # No heartbeat yet: a status can arrive first. Allow the same grace as a live probe.
            return first_seen is None or now - first_seen > PROBE_DEAD_AFTER_BEATS * 1.0
        last, interval, _ = beat
        return now - last > PROBE_DEAD_AFTER_BEATS * interval

    def tick(self) -> set[str]:
        """Advance time: services whose probe went silent (or came back) change."""
        now = self.clock()
        changed = set()
        for name, svc in self.services.items():
            dead = bool(svc.src) and self._probe_dead(svc.src, now, svc.first_seen)
            if dead != svc.dead:
                svc.dead = dead
                svc.last_change = now
                changed.add(name)
        return changed

    # -- output -----------------------------------------------------------------------
    def record(self, name: str) -> dict[str, Any]:
        svc = self.services[name]
        values = sorted(svc.durations)
        total = svc.ok + svc.failed
        s = svc.status
        state, error, error_kind = s.get("state", STATE_UNKNOWN), s.get("error", ""), s.get("error_kind", "")
        if svc.dead:
            state, error_kind = STATE_UNKNOWN, "probe_dead"
            error = (f"no heartbeat from {svc.src} for over {PROBE_DEAD_AFTER_BEATS} intervals; "
                     "the probe has stopped, so this service's real state is unknown")
        return {
            "service": name,
            "kind": s.get("kind", name),
            "state": state,
            "required": bool(s.get("required", False)),
            "url": s.get("url", ""),
            "version": s.get("version", ""),
            "capabilities": s.get("capabilities", []),
            "error": error,
            "error_kind": error_kind,
            "details": s.get("details", {}),
            "probe_alive": bool(svc.src) and not svc.dead,
            "last_check": svc.last_check,
            "last_change": svc.last_change,
            "stats": {
                "count": total,
                "avg_ms": sum(values) / len(values) if values else None,
                "p50_ms": _quantile(values, 0.50) if values else None,
                "p95_ms": _quantile(values, 0.95) if values else None,
                "p99_ms": _quantile(values, 0.99) if values else None,
                "min_ms": values[0] if values else None,
                "max_ms": values[-1] if values else None,
                "success_rate": svc.ok / total if total else None,
            },
        }

    def state(self, history_range: str = "5m") -> dict[str, Any]:
        """The full state a late joiner needs."""
        return {
            "services": {name: self.record(name) for name in self.services},
            "alerts": [],
            "history": {},
        }
