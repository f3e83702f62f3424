"""The stats engine: events and a clock in, snapshots out. No sockets, no files, no time.time().

Everything here is a pure function of the messages ingested and the times the injected
clock returned, so every figure can be tested to the millisecond with a fake clock.
The record layout is documented field by field in docs/metrics.md.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

from bus.protocol import PROBE_HEARTBEAT_INTERVAL, STATE_DEGRADED, STATE_UNKNOWN, Message

from . import alerts as alerting
from . import sketch
from .settings import Settings, label
from .tiers import (CLASS_NAMES, DEGRADED, DOWN, LOADING, SLEEPING, UNKNOWN, UP, Agg, Tier, agg_from_row, agg_row,
                    uptime)

PROBE_DEAD_AFTER_BEATS = 3  # heartbeat intervals of silence (no beat, no status) before a probe counts as dead
JOB_TIMES_KEPT = 500        # recent job processing times kept for their percentiles
MAX_ERROR_KINDS = 32         # distinct timing error kinds counted per service; more are counted as "other"
MAX_ERROR_KIND_CHARS = 64
MAX_USAGE_MODELS = 64        # distinct models in the token-usage table; more are counted as "other"
ALERT_EVAL_EVERY = 1.0      # seconds of clock time between alert evaluations
# Two clock readings further apart than this mean nobody watched in between: the machine
# slept (a monotonic clock that counts suspend, or the shell's timeline following a forward
# wall-clock step), or the process was stopped. The default suits a caller that reads the
# clock at least every few seconds; the aggregator shell, which reads it 4 times a second,
# passes its own, smaller bound (server.OBSERVED_STEP).
MAX_OBSERVED_STEP = 15.0
# A probe's state -> the class its time is credited to (anything else, "connecting" too:
# unknown). "degraded" is no probe's word: the engine shows it for a connected service while
# one of DEGRADING_ALERTS is active, and credits that time to DEGRADED.
STATE_CLASS = {"connected": UP, "disconnected": DOWN, "error": DOWN, "loading": LOADING, "sleeping": SLEEPING}
DEGRADING_ALERTS = ("p95", "queue")
_key = sketch.key


class Series:
    """The tiers of one service, and where its state-time accounting stands."""

    def __init__(self, tier_specs: list[tuple[float, float]], now: float) -> None:
        self.tiers = [Tier(step, keep, label(keep), label(step), live=(i == 0))
                      for i, (step, keep) in enumerate(tier_specs)]
        self.live = self.tiers[0]
        self.cls = UNKNOWN
        self.credited = now   # state time is accounted for up to here
        self.first_seen = now
        self.last_events = now  # end of the newest closed 1 s bucket that held events
        self.live.roll_to(now)
        for t in self.tiers[1:]:
            t.roll_to(now)
        self.live_end = (self.live.acc_k + 1) * self.live.step
        self.state_changes = 0  # the coarser windows' uptime must follow each one at once
        # How often the windows past the first (1 h, 24 h, 7 d) are recomputed: the first
        # coarse tier's step (10 s by default), since those windows move by whole buckets.
        self.refresh = tier_specs[1][0] if len(tier_specs) > 1 else tier_specs[0][0]

    def _credit(self, upto: float) -> None:
        if upto > self.credited:
            for t in self.tiers:
                t.credit(self.credited, upto, self.cls)
            self.credited = upto

    def advance(self, now: float) -> bool:
        """Close the 1 s bucket if its time is over; roll coarser tiers. True if anything closed."""
        if now < self.live_end:
            return False
        end = self.live_end
        self._credit(end)
        closed = self.live.acc
        has_events = closed.ok or closed.fail or closed.qpeak >= 0
        self.live.roll_to(end)
        if has_events:
            self.last_events = end
            for t in self.tiers[1:]:
                t.absorb(closed)  # their open bucket covers `closed` (credited only up to `end`)
        self._credit(now)
        for t in self.tiers:
            t.roll_to(now)
        self.live_end = (self.live.acc_k + 1) * self.live.step
        return True

    def unobserved(self, t0: float, t1: float) -> None:
        """Nobody watched [t0, t1): that time is unknown, whatever the state was before."""
        self.advance(t0)
        self._credit(t0)
        cls, self.cls = self.cls, UNKNOWN
        self.advance(t1)
        self._credit(t1)
        self.cls = cls
        self.state_changes += 1

    def set_state(self, now: float, cls: int, at: float | None = None) -> None:
        """The state class changes at `at` (default now; earlier when a silence is noticed late)."""
        at = now if at is None else min(now, max(at, self.credited))
        self.advance(at)
        self._credit(at)
        self.cls = cls
        self.advance(now)
        self.state_changes += 1

    def window(self, i: int, now: float) -> dict[str, Any]:
        """Figures over tier i's ring plus its open bucket. The coarser windows leave out the
        still-open 1 s bucket (it joins them when it closes, within a second)."""
        tier = self.tiers[i]
        oldest = tier.oldest_start()
        start = max(self.first_seen, oldest if oldest is not None else now)
        return tier.figures((self.cls, max(0.0, now - self.credited)), now - start)


class ServiceState:
    def __init__(self, name: str, series: Series) -> None:
        self.name = name
        self.status: dict[str, Any] = {"state": STATE_UNKNOWN}
        self.last_check = 0.0
        self.last_change = 0.0
        self.src = ""
        self.series = series
        self.queue_current: int | None = None
        self.job_times: deque[float] = deque(maxlen=JOB_TIMES_KEPT)
        self.last_job_time: Any = None
        self.usage: dict[str, list] = {}  # model -> [tokens_in, tokens_out, requests, bins, provider]
        self.usage_since = 0.0
        self.error_kinds: set[str] = set()  # the service's vocabulary of timing error kinds, bounded
        self.src_since = 0.0  # when this probe (src) first reported: grace before its first heartbeat
        self.dead = False     # probe silent: shown as unknown, while `status` keeps its last report
        self.degraded = False  # a DEGRADING_ALERTS alert is active: connected is shown as degraded
        # What its alert rules were last evaluated on ((rules, alerts.inputs()), or None), and
        # the (alert, raise_after, clear_after) timers that evaluation left running.
        self.alert_key: tuple | None = None
        self.alert_timers: list[tuple[alerting.Alert, float, float]] = []
        self.down_since: float | None = None  # when the state class became down (disconnected or error)
        self.last_event = 0.0  # newest status or usage event (timings: Series.last_events)
        self.version = 0
        self.cache: tuple[int, dict[str, Any]] | None = None
        # The record's parts that follow only from the last status and the probe's liveness:
        # (status, (dead, degraded, src), parts), rebuilt when one of those changes.
        self.status_parts: tuple | None = None
        self.window_cache: dict[int, tuple[tuple, dict[str, Any]]] = {}  # tier -> (refresh slot, figures)
        self.history_cache: dict[int, HistoryColumns] = {}  # tier -> its closed buckets' history columns
        self.history_out: dict[int, tuple[tuple, dict[str, Any]]] = {}  # tier -> (what it was built from, entry)

    def error_kind(self, kind: Any) -> str:
        """The name a failed timing is counted under. The sender chooses it, and every bucket
        of every tier keeps a count per name, so a service has at most MAX_ERROR_KINDS names
        (first come); any further one is counted as "other"."""
        if not isinstance(kind, str) or not kind:
            return "error"
        kind = kind[:MAX_ERROR_KIND_CHARS]
        if kind in self.error_kinds:
            return kind
        if len(self.error_kinds) >= MAX_ERROR_KINDS:
            return "other"
        self.error_kinds.add(kind)
        return kind


class Engine:
    def __init__(self, clock: Callable[[], float], settings: Settings | None = None,
                 max_step: float = MAX_OBSERVED_STEP) -> None:
        self.clock = clock
        self.max_step = max_step
        self.settings = settings or Settings()
        self.services: dict[str, ServiceState] = {}
        self.probes: dict[str, tuple[float, float, list[str]]] = {}  # src -> (last beat, interval, services)
        self.alerts: dict[tuple[str, str], alerting.Alert] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []  # alert.* events for the shell to publish
        self.persistence: dict[str, Any] = {"mode": "memory", "reason": "not persisted (engine only)"}
        self._last_alert_eval = -math.inf
        self._now = -math.inf
        self.bad_events = 0       # events that raised inside the engine (a bug, or input we missed)
        self.last_bad_event = ""

    def _time(self) -> float:
        now = self.clock()
        last = self._now
        if now <= last:  # a clock that went back (the shell's timeline never does): time holds
            return last
        self._now = now
        if now - last > self.max_step and last > -math.inf:
            self._unobserved(last, now)
        return now

    def _unobserved(self, t0: float, t1: float) -> None:
        """A step of the clock longer than max_step: [t0, t1) is credited unknown, and
        the timers that measure silence or duration (probe heartbeats, down timers, alert
        conditions) skip it, so a sleep neither invents uptime nor kills every probe."""
        gap = t1 - t0
        for svc in self.services.values():
            svc.series.unobserved(t0, t1)
            svc.src_since += gap
            svc.last_event += gap
            svc.series.last_events += gap
            if svc.down_since is not None:
                svc.down_since += gap
            svc.version += 1
        self.probes = {src: (last + gap, interval, names) for src, (last, interval, names) in self.probes.items()}
        for alert in self.alerts.values():
            if alert.bad_since is not None:
                alert.bad_since += gap
            if alert.good_since is not None:
                alert.good_since += gap

    def now(self) -> float:
        """The engine's time (its clock, never backwards): for callers that label output."""
        return self._time()

    def history_end(self) -> float:
        """The latest time the engine's services are accounted for (restored history included)."""
        return max((svc.series.credited for svc in self.services.values()), default=-math.inf)

    def _service(self, name: str, now: float) -> ServiceState:
        svc = self.services.get(name)
        if svc is None:
            svc = self.services[name] = ServiceState(name, Series(self.settings.tiers, now))
            svc.last_event = now
        return svc

    # -- input ------------------------------------------------------------------------
    def ingest(self, msg: Message) -> set[str]:
        """Apply one decoded event. Returns the names of services whose record changed."""
        changed: set[str] = set()
        self.ingest_batch((msg,), changed)
        return changed

    def ingest_batch(self, msgs, changed: set[str], refused: list | None = None) -> None:
        """Apply many decoded events that arrived together (one clock reading for all of them:
        the aggregator drains at most 50 ms at a time, far below the 1 s bucket). Adds the
        names of services whose record changed to `changed`.

        `msgs` may be the decoder's output as is (`map(decode, frames)`, the lean way to feed
        thousands of frames): items that are not Messages, its Rejections, are falsy, skipped,
        and appended to `refused` for the caller to count."""
        now = self._time()
        services = self.services
        for msg in msgs:
            if not msg:
                if refused is not None:
                    refused.append(msg)
                continue
            try:  # zero cost unless raised: one odd event must never stop the others
                topic = msg.topic
                # Slices, not startswith(): its argument parsing costs more than the compare.
                if topic[:7] == "timing.":  # the hot path: a few adds in the open 1 s bucket
                    body = msg.body
                    name = body["service"]
                    svc = services.get(name) or self._service(name, now)
                    series = svc.series
                    if now >= series.live_end:
                        series.advance(now)
                    acc = series.live.acc
                    if body["ok"]:
                        d = body["duration_ms"]
                        if not 0 <= d < 1e12:  # negative, NaN or infinite: not a duration
                            continue
                        k = _key(d)
                        bins = acc.bins
                        bins[k] = bins.get(k, 0) + 1
                        acc.ok += 1
                        acc.sum += d
                        if d < acc.mn:
                            acc.mn = d
                        if d > acc.mx:
                            acc.mx = d
                    else:
                        acc.fail += 1
                        kind = svc.error_kind(body.get("error_kind"))
                        acc.errors[kind] = acc.errors.get(kind, 0) + 1
                    svc.version += 1
                    changed.add(name)
                elif topic[:7] == "status.":
                    changed.add(self._on_status(msg, now))
                else:
                    changed |= self._ingest_other(msg, now)
            except Exception as exc:  # noqa: BLE001 - counted and reported by the shell
                self.bad_events += 1
                self.last_bad_event = f"{msg.topic} from {msg.src}: {exc.__class__.__name__}: {exc}"[:300]

    def _ingest_other(self, msg: Message, now: float) -> set[str]:
        kind = msg.kind
        if kind == "heartbeat":
            services = msg.body.get("services") or []
            services = [s for s in services if isinstance(s, str)]
            self.probes[msg.src] = (now, float(msg.body["interval"]), services)
            return set()  # tick() notices a probe coming back
        if kind == "llm" and msg.topic == "llm.usage":
            return self._on_usage(msg.body, now)
        return set()

    def _on_status(self, msg: Message, now: float) -> str:
        """Apply a status event; returns the service's name."""
        body = msg.body
        name = body["service"]
        svc = self.services.get(name) or self._service(name, now)
        previous = svc.status.get("state")
        svc.status = body
        if svc.src != msg.src:
            svc.src, svc.src_since = msg.src, now
        beat = self.probes.get(msg.src)
        if beat is not None:  # a status proves its probe alive as a heartbeat does
            self.probes[msg.src] = (now, beat[1], beat[2])
        svc.last_check = svc.last_event = now
        details = body.get("details")
        if details.__class__ is dict:
            q = details.get("queue_depth")
            jt = details.get("job_time_ms")
        else:
            q = jt = None
        svc.queue_current = q = q if _number(q) else None
        if q is not None:
            svc.series.advance(now)
            svc.series.live.queue(q)
        if jt is not None and jt != svc.last_job_time and _number(jt):
            svc.job_times.append(float(jt))  # probes repeat the last job's time; count each job once
        svc.last_job_time = jt
        if body["state"] != previous:
            if not svc.dead:
                svc.last_change = now
            self._sync_state(svc, now)
        svc.version += 1
        return name

    def _sync_state(self, svc: ServiceState, now: float, at: float | None = None) -> None:
        """Start a new uptime span if the effective state class changed."""
        cls = UNKNOWN if svc.dead else STATE_CLASS.get(svc.status.get("state"), UNKNOWN)
        if cls == UP and svc.degraded:
            cls = DEGRADED
        if cls != svc.series.cls:
            svc.series.set_state(now, cls, at)
            svc.down_since = now if cls == DOWN else None  # disconnected <-> error keeps it running

    def _on_usage(self, body: dict[str, Any], now: float) -> set[str]:
        svc = self._service("llm", now)
        svc.last_event = now
        if not svc.usage:
            svc.usage_since = now
        model = body["model"][:200]
        u = svc.usage.get(model)
        if u is None and len(svc.usage) >= MAX_USAGE_MODELS:  # the sender names the models: bounded
            model = "other"
            u = svc.usage.get(model)
        if u is None:
            u = svc.usage[model] = [0, 0, 0, {}, None]
        u[0] += min(max(0, body["tokens_in"]), 1 << 40)
        u[1] += min(max(0, body["tokens_out"]), 1 << 40)
        u[2] += 1
        lat = body["latency_ms"]
        if 0 <= lat < 1e12:
            k = _key(lat)
            u[3][k] = u[3].get(k, 0) + 1
        if isinstance(body.get("provider"), str):
            u[4] = body["provider"][:64]
        svc.version += 1
        return {"llm"}

    def _probe_dead(self, src: str, now: float, first_seen: float | None = None) -> bool:
        beat = self.probes.get(src)
        if beat is None:
            # No heartbeat yet: a status can arrive first. Allow the same grace as a live probe.
            return first_seen is None or now - first_seen > PROBE_DEAD_AFTER_BEATS * PROBE_HEARTBEAT_INTERVAL
        last, interval, _ = beat
        return now - last > PROBE_DEAD_AFTER_BEATS * interval

    def _dead_since(self, svc: ServiceState) -> float:
        beat = self.probes.get(svc.src)
        if beat is None:
            return svc.src_since + PROBE_DEAD_AFTER_BEATS * PROBE_HEARTBEAT_INTERVAL
        return beat[0] + PROBE_DEAD_AFTER_BEATS * beat[1]

    def liveness_due(self) -> tuple[float, bool]:
        """(the engine time after which a silent probe will count as dead, math.inf if none;
        whether any service shows its probe dead now). Without new events tick() changes no
        liveness before that time, so a loop can sleep until then (heartbeats only move it later)."""
        first, dead = math.inf, False
        for svc in self.services.values():
            if not svc.src:
                continue
            if svc.dead:
                dead = True
            else:
                first = min(first, self._dead_since(svc))
        return first, dead

    def tick(self) -> set[str]:
        """Advance time: roll buckets, mark silent probes unknown, evaluate alerts."""
        now = self._time()
        changed = set()
        forget, configured, quiet_limit = [], self.settings.configured, self.settings.forget_after
        for name, svc in self.services.items():
            if name not in configured and now - max(svc.last_event, svc.series.last_events) > quiet_limit:
                acc = svc.series.live.acc
                if not (acc.ok or acc.fail):  # (a timing may wait in the open bucket)
                    forget.append(name)
                    continue
            # Liveness first: time is credited to the old state only up to when the probe died.
            dead = bool(svc.src) and self._probe_dead(svc.src, now, svc.src_since)
            if dead != svc.dead:  # went silent, or came back
                svc.dead = dead
                # The unknown span starts when the silence became too long, even if noticed later.
                at = self._dead_since(svc) if dead else now
                svc.last_change = at
                self._sync_state(svc, now, at)
                svc.version += 1
                changed.add(name)
            if svc.series.advance(now):
                svc.version += 1
        for name in forget:
            self._forget(name, f"no events for {label(quiet_limit)}, and it is not a configured service")
        if now - self._last_alert_eval >= ALERT_EVAL_EVERY:
            self._last_alert_eval = now
            changed |= self.evaluate_alerts(now)
        return changed

    def _forget(self, name: str, reason: str) -> None:
        """Drop a service (issue 11 item 7): its alerts end, and the shell publishes its end
        (contract 1: a `snapshot.<service>` delete) and deletes its history."""
        del self.services[name]
        for key in [k for k in self.alerts if k[0] == name]:
            alert = self.alerts.pop(key)
            if alert.active:
                alert.active, alert.message = False, f"cleared: {name} was forgotten ({reason})"
                self.events.append(alert.event())
        self.events.append((f"snapshot.{name}", {"service": name, "deleted": True, "reason": reason}))

    def evaluate_alerts(self, now: float) -> set[str]:
        changed = set()
        for name, svc in self.services.items():
            rules = self.settings.alert_rules(name)
            if not rules.get("enabled", True):
                continue
            try:
                record = self.record(name)
                inputs = alerting.inputs(record)
                key = None if inputs is None else (rules, inputs)
                # Same inputs and no timer due: stepping would change nothing (an idle service).
                if key is not None and key == svc.alert_key and not any(
                        alerting.due(a, ra, ca, now) for a, ra, ca in svc.alert_timers):
                    continue
                svc.alert_key = None
                conditions = alerting.conditions(rules, record, now)
            except Exception as exc:  # noqa: BLE001 - odd details must not stop the other alerts
                self.bad_events += 1
                self.last_bad_event = f"alerts for {name}: {exc.__class__.__name__}: {exc}"[:300]
                continue
            timers = []
            for (aname, metric, value, threshold, bad, good, raise_after, clear_after, message) in conditions:
                alert = self.alerts.get((name, aname))
                if alert is None:
                    alert = self.alerts[(name, aname)] = alerting.Alert(name, aname, metric)
                timers.append((alert, raise_after, clear_after))
                alert.threshold = threshold
                if alert.step(now, bad, good, raise_after, clear_after):
                    alert.value = value
                    alert.message = message if alert.active else f"cleared: {message}"
                    self.events.append(alert.event())
                    changed.add(name)
                elif alert.active:
                    alert.value = value
            svc.alert_key, svc.alert_timers = key, timers
            self._sync_degraded(svc, now, changed)
        return changed

    def _sync_degraded(self, svc: ServiceState, now: float, changed: set[str]) -> None:
        """Connected shows as degraded exactly while a p95 or queue alert of it is active."""
        degraded = any((a := self.alerts.get((svc.name, n))) is not None and a.active for n in DEGRADING_ALERTS)
        if degraded == svc.degraded:
            return
        svc.degraded = degraded
        if not svc.dead and svc.status.get("state") == "connected":  # what the record shows changes
            svc.last_change = now
        self._sync_state(svc, now)
        svc.version += 1
        changed.add(svc.name)

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.events = self.events, []
        return events

    def active_alerts(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.alerts.values() if a.active]

    # -- persistence: plain rows out and in (aggregator/store.py writes and reads them) ----
    def rows_to_persist(self, written: dict[tuple[str, str], int]) -> dict[str, Any]:
        """Everything a flush writes, as plain data:

        - "buckets": (service, tier, k, *tiers.agg_row(bucket)) for each closed bucket newer
          than `written[(service, tier)]` (the newest one already committed) and each open one,
          with state time credited up to now;
        - "deletes": (service, tier, oldest k still held): older rows left the ring;
        - "services": (service, plain dict) of what a restart needs besides the buckets;
        - "alerts": the active alerts (Alert.as_dict());
        - "marks": the new `written` values, for the store to keep once its commit succeeded."""
        now = self._time()
        buckets, deletes, services, marks = [], [], [], {}
        for name, svc in self.services.items():
            series = svc.series
            series.advance(now)
            series._credit(now)  # so the open buckets on disk hold their state time up to now
            for tier in series.tiers:
                tname = tier.name
                oldest = tier.head - tier.filled + 1
                for k in range(max(oldest, written.get((name, tname), oldest - 1) + 1), tier.head + 1):
                    buckets.append((name, tname, k, *agg_row(tier.bucket_at(k % tier.n))))
                if tier.acc_k is not None:
                    buckets.append((name, tname, tier.acc_k, *agg_row(tier.acc)))
                marks[(name, tname)] = tier.head
                deletes.append((name, tname, oldest))
            services.append((name, {
                "status": svc.status, "last_check": svc.last_check, "last_change": svc.last_change,
                "first_seen": series.first_seen, "credited": series.credited,
                "job_times": list(svc.job_times),
                "usage": {m: [u[0], u[1], u[2], list(u[3].items()), u[4]] for m, u in svc.usage.items()},
                "usage_since": svc.usage_since,
                "last_event": max(svc.last_event, series.last_events)}))
        return {"buckets": buckets, "deletes": deletes, "services": services, "alerts": self.active_alerts(),
                "marks": marks}

    def load_rows(self, services: dict[str, Any], buckets: dict[tuple[str, str], list[tuple]],
                  alerts: list[Any] = ()) -> tuple[dict[tuple[str, str], int], int]:
        """Rebuild a fresh engine from what rows_to_persist wrote. `buckets[(service, tier)]`
        holds (k, *tiers.agg_row(...)) rows in order of k. Returns (marks, buckets loaded):
        the marks are the store's `written` for the next flush.

        A restored service is unknown until its probe reports (nobody watched while the
        aggregator was down, so that time is credited unknown too); restored alerts stay
        active until their clear condition holds again."""
        marks: dict[tuple[str, str], int] = {}
        loaded = 0
        for name, data in services.items():
            if not isinstance(data, dict) or not data.get("first_seen"):
                continue
            first_seen = float(data["first_seen"])
            series = Series(self.settings.tiers, first_seen)
            for tier in series.tiers:
                for row in buckets.get((name, tier.name), ()):
                    tier.roll_to(row[0] * tier.step)
                    if tier.acc_k == row[0]:
                        tier.load_acc(agg_from_row(row[1:]))
                        loaded += 1
                marks[(name, tier.name)] = tier.head
            series.credited = max(float(data.get("credited") or first_seen), first_seen)
            series.cls = UNKNOWN
            series.live_end = (series.live.acc_k + 1) * series.live.step
            svc = self.services[name] = ServiceState(name, series)
            status = data.get("status") if isinstance(data.get("status"), dict) else {}
            svc.status = dict(status, state=STATE_UNKNOWN, error="the aggregator restarted; waiting for this "
                              "service's probe to report", error_kind="probe_dead")
            svc.last_check = float(data.get("last_check") or 0.0)
            svc.last_change = float(data.get("last_change") or 0.0)
            svc.job_times.extend(float(x) for x in data.get("job_times") or [])
            for model, u in (data.get("usage") or {}).items():
                svc.usage[model] = [int(u[0]), int(u[1]), int(u[2]), {int(k): int(c) for k, c in u[3]}, u[4]]
            svc.usage_since = float(data.get("usage_since") or 0.0)
            svc.last_event = series.last_events = float(data.get("last_event") or series.credited)
        for a in alerts:
            if not isinstance(a, dict) or a.get("service") not in self.services or not isinstance(a.get("name"), str):
                continue
            alert = alerting.Alert(a["service"], a["name"], str(a.get("metric", "")))
            alert.active = True
            alert.since = float(a.get("since") or 0.0)
            alert.value, alert.threshold, alert.message = a.get("value"), a.get("threshold"), str(a.get("message", ""))
            self.alerts[(alert.service, alert.name)] = alert
            if alert.name in DEGRADING_ALERTS:
                self.services[alert.service].degraded = True
        return marks, loaded

    # -- output -----------------------------------------------------------------------
    def record(self, name: str) -> dict[str, Any]:
        svc = self.services[name]
        now = self._time()
        cached = svc.cache
        if cached is None or cached[0] != svc.version:
            svc.cache = cached = (svc.version, self._build(svc, now))
        out = dict(cached[1])
        out["probe_alive"] = bool(svc.src) and not svc.dead
        out["since_change_s"] = max(0.0, now - svc.last_change) if svc.last_change else None
        out["down_for_s"] = None if svc.down_since is None else max(0.0, now - svc.down_since)
        return out

    def _build(self, svc: ServiceState, now: float) -> dict[str, Any]:
        s = svc.status
        series = svc.series
        windows = {}
        # The first window is exact at every build. The coarser ones (a p95 over an hour or a
        # day) are recomputed once per `series.refresh` seconds and at each state change:
        # between two builds they move by a few samples in thousands, and skipping them keeps
        # a record build near one window's cost (bench figure 7).
        # A young service's windows are always exact: while they hold less than ten refresh
        # periods, a lag of one would show (a 24 h p95 of "—" next to a 5 m one).
        settled = now - series.first_seen >= 10 * series.refresh
        slot = (math.floor(now / series.refresh), series.state_changes)
        for i, tier in enumerate(series.tiers):
            hit = svc.window_cache.get(i) if i and settled else None
            if hit is not None and hit[0] == slot:
                windows[tier.label] = hit[1]
                continue
            windows[tier.label] = w = series.window(i, now)
            if i:
                svc.window_cache[i] = (slot, w)
        first = windows[series.tiers[0].label]
        parts = svc.status_parts
        flags = (svc.dead, svc.degraded, svc.src)
        if parts is None or parts[0] is not s or parts[1] != flags:
            parts = svc.status_parts = (s, flags, self._status_parts(svc))
        head, job_time, resources = parts[2]
        record = head.copy()
        record["last_check"] = svc.last_check
        record["last_change"] = svc.last_change
        record["stats"] = {k: first[k] for k in _STATS}
        record["windows"] = windows
        record["uptime"] = {lbl: w["uptime"] for lbl, w in windows.items()}
        record["queue"] = {"current": svc.queue_current, "peak": first["queue_peak"]}
        record["job_time"] = job_time
        record["resources"] = resources
        if svc.name == "llm" or svc.usage:
            record["usage"] = self._usage(svc)
        return record

    def _status_parts(self, svc: ServiceState) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
        """The record's fields up to "timeout", its job_time and its resources: what follows
        from the last status (job times arrive with it) and the probe's liveness alone."""
        s = svc.status
        jobs = sorted(svc.job_times)
        details = s.get("details") if isinstance(s.get("details"), dict) else {}
        state, error, error_kind = s.get("state", STATE_UNKNOWN), s.get("error", ""), s.get("error_kind", "")
        if svc.dead:
            state, error_kind = STATE_UNKNOWN, "probe_dead"
            error = (f"nothing heard from {svc.src} (no heartbeat, no status) for over {PROBE_DEAD_AFTER_BEATS} "
                     "heartbeat intervals; "
                     "the probe has stopped, so this service's real state is unknown")
        elif state == "connected" and svc.degraded:
            state = STATE_DEGRADED
        head = {
            "service": svc.name,
            "kind": s.get("kind", svc.name),
            "state": state,
            "required": bool(s.get("required", False)),
            "url": s.get("url", ""),
            "version": s.get("version", ""),
            "capabilities": s.get("capabilities", []),
            "error": error,
            "error_kind": error_kind,
            "details": details,
            "interval": s.get("interval"),
            "timeout": s.get("timeout"),
        }
        job_time = ({"p50_ms": _exact_q(jobs, 0.5), "p95_ms": _exact_q(jobs, 0.95), "count": len(jobs)}
                    if jobs else None)
        return head, job_time, details.get("resources")

    def price_of(self, model: str, provider: str | None = None) -> dict[str, float] | None:
        prices = self.settings.prices
        for candidate in ([f"{provider}/{model}"] if provider else []) + [model]:
            if candidate in prices:
                return prices[candidate]
        best = max((p for p in prices if model.startswith(p)), key=len, default=None)  # "gpt-4o-2024-08-06"
        return prices[best] if best else None

    def _usage(self, svc: ServiceState) -> dict[str, Any]:
        by_model = {}
        total_tokens = 0
        cost = 0.0
        unpriced = []
        for model, (t_in, t_out, requests, bins, provider) in sorted(svc.usage.items()):
            price = self.price_of(model, provider)
            c = None if price is None else (t_in * price["input"] + t_out * price["output"]) / 1e6
            if c is None:
                unpriced.append(model)
            else:
                cost += c
            p50, p95 = sketch.quantiles(bins, (0.5, 0.95))
            by_model[model] = {"tokens_in": t_in, "tokens_out": t_out, "requests": requests, "cost_usd": c,
                               "latency_p50_ms": p50, "latency_p95_ms": p95, "provider": provider}
            total_tokens += t_in + t_out
        return {"by_model": by_model, "total_tokens": total_tokens, "cost_usd": cost,
                "unpriced_models": unpriced, "since": svc.usage_since or None}

    def state(self, history_range: str | None = "5m", points: int | None = None) -> dict[str, Any]:
        """The full state a late joiner needs (without history when the range is None;
        `points`: see history())."""
        out = {
            "services": {name: self.record(name) for name in self.services},
            "alerts": self.active_alerts(),
            "persistence": dict(self.persistence),
            "windows": [t.label for t in self._tier_template()],
        }
        if history_range is not None:
            out["history"] = self.history(history_range, points)
        return out

    def _tier_template(self) -> list[Tier]:
        return [Tier(step, step, label(keep), label(step)) for step, keep in self.settings.tiers]

    def tier_index(self, name: str, by: str = "label") -> int | None:
        """Index of the tier whose window label ("1h") or step name ("10s") is `name`."""
        for i, (step, keep) in enumerate(self.settings.tiers):
            if (label(keep) if by == "label" else label(step)) == name:
                return i
        return None

    def history(self, history_range: str = "5m", points: int | None = None) -> dict[str, Any]:
        """The trend columns a late joiner draws (contract C4, docs/protocol.md):

            {"range": "5m", "step_s": 1.0,
             "services": {svc: {"t0": wall seconds, "p50_ms": [...], "p95_ms": [...],
                                "success_rate": [...], "up_ratio": [...]}}}

        Point k of every column is the bucket that starts at t0 + k * step_s, oldest first,
        the last one still open; a bucket with nothing to say is None (a gap), never left
        out. `points` (>= 1) keeps only that many trailing points. up_ratio is the uptime
        rule of the windows (up and degraded over up, degraded and down). Ratios that are
        exactly 0 or 1 are the integers 0 and 1: msgpack writes them in one byte and a
        decoder allocates nothing for them, and most 1 s buckets are all-up and all-ok.

        The columns of the closed buckets are kept per service and tier and only extended
        by the buckets closed since the last call, so a reply costs the open bucket plus a
        few list copies per service. The lists are shared between calls: read them, do not
        modify them."""
        i = self.tier_index(history_range)
        if i is None:
            i = 0
        step, keep = self.settings.tiers[i]
        if points is not None:
            points = max(1, int(points))
        out = {"range": label(keep), "step_s": step, "services": {}}
        services = out["services"]
        for name, svc in self.services.items():
            services[name] = self._history_of(svc, i, points)
        return out

    def _history_of(self, svc: ServiceState, i: int, points: int | None) -> dict[str, Any]:
        series = svc.series
        tier = series.tiers[i]
        key = (tier.head, tier.acc_k, svc.version, series.credited, points)
        done = svc.history_out.get(i)
        if done is not None and done[0] == key:  # nothing changed since the last reply
            return done[1]
        closed = svc.history_cache.get(i)
        oldest = tier.head - tier.filled + 1
        if closed is None or not (oldest - 1 <= closed.last <= tier.head):
            closed = svc.history_cache[i] = HistoryColumns(oldest)
        closed.extend(tier, tier.head)  # the buckets closed since the last call
        closed.drop_before(oldest)      # and those that left the ring
        first, cols = closed.first, closed.cols
        if tier.acc_k is None:
            lists = [list(c) for c in cols]
        elif not cols[0]:
            first, lists = tier.acc_k, [[v] for v in _point(tier.acc, tier.acc.time)]
        else:  # the open bucket is the one after the ring's newest (a hole would be None)
            pad = [None] * max(0, tier.acc_k - closed.last - 1)
            lists = [c + pad + [v] for c, v in zip(cols, _point(tier.acc, tier.acc.time))]
        total = len(lists[0])
        if points is not None and points < total:
            lists = [c[total - points:] for c in lists]
            first += total - points
        entry: dict[str, Any] = {"t0": first * tier.step}
        entry.update(zip(HISTORY_COLUMNS, lists))
        svc.history_out[i] = (key, entry)
        return entry

    def rows(self, tier: str, since_s: float, service: str | None = None) -> list[dict[str, Any]]:
        """Bucket rows for export (columns: docs/metrics.md). Raises ValueError on a bad tier/service."""
        i = self.tier_index(tier, by="step")
        if i is None:
            known = ", ".join(label(s) for s, _ in self.settings.tiers)
            raise ValueError(f"unknown tier {tier!r} (known: {known})")
        if service is not None and service not in self.services:
            raise ValueError(f"unknown service {service!r} (known: {', '.join(sorted(self.services)) or 'none yet'})")
        cutoff = self._time() - since_s
        out = []
        for name in sorted(self.services):
            if service is not None and name != service:
                continue
            for start, agg, is_open in self.services[name].series.tiers[i].buckets(cutoff):
                out.append(bucket_row(name, label(self.settings.tiers[i][0]), start, agg, is_open))
        return out


_STATS = ("count", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "success_rate")  # record["stats"]
HISTORY_COLUMNS = ("p50_ms", "p95_ms", "success_rate", "up_ratio")
_MEDIAN_P95 = (0.5, 0.95)
# A closed bucket's packed bins -> its (p50, p95). Few distinct blobs occur (a probe's
# latencies fill a few bins, a second's bucket holds one or two samples), so this makes the
# first history of hundreds of services (after a restart) cost a lookup per bucket.
_QUANTILES_OF_BLOB: dict[bytes, list] = {}
_QUANTILES_MEMO_SIZE = 50_000
_QUANTILES_OF_BINS: dict[tuple, list] = {}  # the same for an open bucket's few (key, count) pairs


class HistoryColumns:
    """The history columns (HISTORY_COLUMNS) of one tier's closed buckets `first`..`last`."""
    __slots__ = ("first", "cols")

    def __init__(self, first: int) -> None:
        self.first = first
        self.cols: tuple[list, ...] = tuple([] for _ in HISTORY_COLUMNS)

    @property
    def last(self) -> int:
        return self.first + len(self.cols[0]) - 1

    def extend(self, tier: Tier, upto: int) -> None:
        """Append the closed buckets after `last` up to bucket `upto`, read from the ring's
        columns in place (no Agg is built for them)."""
        p50s, p95s, oks, ups = self.cols
        n, c_ok, c_fail, c_sk = tier.n, tier.c_ok, tier.c_fail, tier.c_sk
        c_up, c_down, c_degraded = tier.c_time[UP], tier.c_time[DOWN], tier.c_time[DEGRADED]
        memo = _QUANTILES_OF_BLOB
        for k in range(self.last + 1, upto + 1):
            slot = k % n
            blob = c_sk[slot]
            if blob is None:
                p50 = p95 = None
            else:
                q = memo.get(blob)
                if q is None:
                    if len(memo) >= _QUANTILES_MEMO_SIZE:
                        memo.clear()
                    q = memo[blob] = sketch.quantiles(dict(sketch.unpack(blob)), _MEDIAN_P95)
                p50, p95 = q
            ok = c_ok[slot]
            up = c_up[slot] + c_degraded[slot]
            p50s.append(p50)
            p95s.append(p95)
            oks.append(_ratio(ok, ok + c_fail[slot]))
            ups.append(_ratio(up, up + c_down[slot]))

    def drop_before(self, oldest: int) -> None:
        drop = oldest - self.first
        if drop > 0:
            for c in self.cols:
                del c[:drop]
            self.first = oldest


def _point(agg: Agg, time: list[float]) -> tuple:
    """An open bucket's history point (the order of HISTORY_COLUMNS)."""
    bins = agg.bins
    if len(bins) <= 4:  # a second's bucket: one or two samples, the same few bins again and again
        memo = _QUANTILES_OF_BINS
        q = memo.get(key := tuple(bins.items()))
        if q is None:
            if len(memo) >= _QUANTILES_MEMO_SIZE:
                memo.clear()
            q = memo[key] = sketch.quantiles(bins, _MEDIAN_P95)
        p50, p95 = q
    else:
        p50, p95 = sketch.quantiles(bins, _MEDIAN_P95)
    return p50, p95, _ratio(agg.ok, agg.ok + agg.fail), _up_ratio(time)


def _ratio(part: float, whole: float) -> float | int | None:
    """part / whole; None when whole is 0; exactly 0 or 1 as the int (see Engine.history)."""
    if whole <= 0:
        return None
    r = part / whole
    return 1 if r == 1 else 0 if r == 0 else r


def _up_ratio(time) -> float | int | None:
    """tiers.uptime()'s rule: degraded counts as up; loading, sleeping and unknown as neither."""
    up = time[UP] + time[DEGRADED]
    return _ratio(up, up + time[DOWN])


def bucket_row(service: str, tier: str, start: float, agg: Agg, is_open: bool) -> dict[str, Any]:
    p50, p95, p99 = sketch.quantiles(agg.bins, (0.5, 0.95, 0.99))
    count = agg.ok + agg.fail
    row = {
        "ts": start, "service": service, "tier": tier, "complete": not is_open,
        "count": count, "ok": agg.ok, "failed": agg.fail,
        "success_rate": agg.ok / count if count else None,
        "avg_ms": agg.sum / agg.ok if agg.ok else None,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "min_ms": round(agg.mn, 3) if agg.ok else None, "max_ms": round(agg.mx, 3) if agg.ok else None,
    }
    for c, name in enumerate(CLASS_NAMES):  # up_s, down_s, unknown_s, loading_s, sleeping_s, degraded_s
        row[f"{name}_s"] = round(agg.time[c], 3)
    row["uptime"] = uptime(agg.time)
    row["queue_peak"] = agg.qpeak if agg.qpeak >= 0 else None
    row["errors"] = dict(sorted(agg.errors.items()))
    return row


def _number(v: Any) -> bool:
    """A finite, non-negative number (probes send None for the unknowable, never NaN)."""
    return (v.__class__ is int or v.__class__ is float) and 0 <= v < 1e15  # exact types: bool is no number


def _exact_q(values: list[float], q: float) -> float | None:
    """The sorted values' q-quantile by nearest rank, the sketches' rule (docs/metrics.md)."""
    return values[sketch.nearest_rank(q, len(values)) - 1] if values else None
