"""Retention tiers for one service: fixed-size rings of buckets, each with a DDSketch.

Default tiers (seed): 5 min at 1 s, 1 h at 10 s, 24 h at 1 min. Each tier is a ring of
`keep / step` closed buckets plus one open bucket (`acc`), and keeps running totals over
its ring so a window's figures never need a scan of the ring (only min/max/peak, which
cannot be "un-added", are rescanned, and only when a bucket enters or leaves).

Flow (lazy, so the per-event path touches only the open 1 s bucket):
- events go into tier 0's open bucket;
- when that bucket closes, its events are merged into every coarser tier's open bucket;
- state time is credited to every tier's open bucket at each bucket boundary and each
  state change, split exactly at bucket edges, into one of six classes (CLASS_NAMES): up,
  down, unknown, and the three "alive but not ready" shares (loading, sleeping: a probe's
  report; degraded: connected with a p95 or queue alert active). uptime() says how they count.

Columns are `array`s (4-8 bytes per bucket) and sketches packed `bytes`, which is what
keeps 5 services x 2,100 buckets well under 2 MB.
"""
from __future__ import annotations

from array import array
from collections import deque
from itertools import accumulate
from typing import Any

from . import sketch

UP, DOWN, UNKNOWN, LOADING, SLEEPING, DEGRADED = range(6)
CLASSES = (UP, DOWN, UNKNOWN, LOADING, SLEEPING, DEGRADED)
CLASS_NAMES = ("up", "down", "unknown", "loading", "sleeping", "degraded")  # the *_s keys: up_s, ...
INF = float("inf")


class Agg:
    """An open bucket, or a running total over many buckets."""
    __slots__ = ("bins", "ok", "fail", "sum", "mn", "mx", "errors", "time", "qpeak")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.ok = 0
        self.fail = 0
        self.sum = 0.0
        self.mn = INF
        self.mx = -INF
        self.errors: dict[str, int] = {}
        self.time = [0.0] * len(CLASSES)  # seconds per state class (CLASS_NAMES)
        self.qpeak = -1.0  # highest queue depth seen; -1: none reported

    def merge_events(self, other: "Agg") -> None:
        bins = self.bins
        for k, c in other.bins.items():
            bins[k] = bins.get(k, 0) + c
        self.ok += other.ok
        self.fail += other.fail
        self.sum += other.sum
        if other.mn < self.mn:
            self.mn = other.mn
        if other.mx > self.mx:
            self.mx = other.mx
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        if other.qpeak > self.qpeak:
            self.qpeak = other.qpeak


def encode_errors(errors: dict[str, int]) -> str:
    return ";".join(f"{k}={n}" for k, n in sorted(errors.items()))


def decode_errors(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (text or "").split(";"):
        kind, _, n = part.rpartition("=")
        if kind and n.isdigit():
            out[kind] = out.get(kind, 0) + int(n)
    return out


def uptime(time) -> float | None:
    """The uptime rule (docs/metrics.md): up / (up + down), where degraded counts as up (it
    answers) and loading, sleeping and unknown count as neither (alive but not ready, or
    not watched: evidence of neither up nor down). None when nothing counts."""
    up = time[UP] + time[DEGRADED]
    known = up + time[DOWN]
    return up / known if known > 0 else None


def agg_row(a: Agg) -> tuple:
    """A bucket as a plain row: ok, fail, sum, mn, mx, up, down, unknown, qpeak, sketch, errors,
    loading, sleeping, degraded (the store's columns; None for an empty min/max, packed bins,
    encoded errors). The three later classes come last, so rows written before they existed
    are a prefix of this layout."""
    t = a.time
    return (a.ok, a.fail, a.sum, a.mn if a.mn != INF else None, a.mx if a.mx != -INF else None,
            t[UP], t[DOWN], t[UNKNOWN], a.qpeak, sketch.pack(a.bins), encode_errors(a.errors) or None,
            t[LOADING], t[SLEEPING], t[DEGRADED])


def agg_from_row(row) -> Agg:
    """The bucket of an agg_row() row, or of an older 11-column one (no loading, sleeping or
    degraded time: none was kept then, so it is 0)."""
    a = Agg()
    a.ok, a.fail, a.sum, mn, mx, up, down, unk, qpeak, blob, errors = row[:11]
    loading, sleeping, degraded = (tuple(row[11:14]) + (None, None, None))[:3]
    a.mn = INF if mn is None else mn
    a.mx = -INF if mx is None else mx
    a.time = [up or 0.0, down or 0.0, unk or 0.0, loading or 0.0, sleeping or 0.0, degraded or 0.0]
    a.qpeak = -1.0 if qpeak is None else qpeak
    a.bins = dict(sketch.unpack(blob))
    a.errors = decode_errors(errors)
    return a


class Tier:
    """One resolution: a ring of closed buckets, the open bucket, and `win`, the running
    aggregate of the whole window (ring + open bucket), kept up to date incrementally.

    Tier 0 is `live`: ingest writes its open bucket directly (the lean per-event path),
    so its `win` holds the ring only and a read adds the open bucket (a few bins)."""

    __slots__ = ("step", "n", "label", "name", "live", "c_ok", "c_fail", "c_sum", "c_mn", "c_mx", "c_time",
                 "c_q", "c_sk", "c_err", "head", "filled", "acc", "acc_k", "win", "counts", "dq_mn", "dq_mx",
                 "dq_q", "gen", "ev_key", "ev")

    def __init__(self, step: float, keep: float, label: str, name: str, live: bool = False) -> None:
        self.step = step
        self.n = max(1, int(round(keep / step)))
        self.label = label  # the window it serves: "5m", "1h", "24h", "7d"
        self.name = name    # the resolution, used by export: "1s", "10s", "1m"
        self.live = live
        n = self.n
        self.c_ok = array("I", bytes(4 * n))
        self.c_fail = array("I", bytes(4 * n))
        self.c_sum = array("d", bytes(8 * n))
        self.c_mn = array("f", [INF]) * n
        self.c_mx = array("f", [-INF]) * n
        self.c_time = [array("f", bytes(4 * n)) for _ in CLASSES]
        self.c_q = array("f", [-1.0]) * n
        self.c_sk: list[bytes | None] = [None] * n
        self.c_err: dict[int, str] = {}  # slot -> encoded errors, only for buckets that had any
        self.head = -1      # bucket index (start / step) of the newest closed bucket
        self.filled = 0     # closed buckets held (contiguous, ending at head)
        self.acc = Agg()
        self.acc_k: int | None = None
        self.win = Agg()    # the window's running aggregate (its bins live in `counts`)
        self.counts = sketch.Counts()
        # Sliding-window min / max / queue peak over the closed buckets: monotonic deques of
        # (bucket index, value), O(1) amortised per bucket instead of a rescan of the ring.
        self.dq_mn: deque[tuple[int, float]] = deque()
        self.dq_mx: deque[tuple[int, float]] = deque()
        self.dq_q: deque[tuple[int, float]] = deque()
        # The window's event figures (counts, quantiles, min/max, errors, queue peak) change
        # only when events enter or leave it, not as time passes nor when a bucket closes:
        # `gen` counts the changes that leave the window's timing totals as they were (an
        # expiry, a merge, a queue peak, a restore, float32 storage altering a shown min/max),
        # and within one gen timings are only ever added, so (gen, totals) names the figures
        # and `ev` keeps those computed at `ev_key`. A window with nothing new recomputes only
        # its state time (an idle service's record, once a second).
        self.gen = 0
        self.ev_key: tuple | None = None
        self.ev: tuple = ()

    # -- writing --------------------------------------------------------------------
    def clear(self) -> None:
        """Drop every closed bucket (a gap longer than the retention); the open one stays."""
        fresh = Tier(self.step, self.n * self.step, self.label, self.name, self.live)
        fresh.gen = self.gen + 1
        for attr in Tier.__slots__:
            if attr not in ("acc", "acc_k"):
                setattr(self, attr, getattr(fresh, attr))
        if not self.live:
            self._add_events(self.acc, 1)
            self.win.time = list(self.acc.time)

    def roll_to(self, t: float) -> None:
        """Make the open bucket the one containing time t, closing (pushing) older ones."""
        k = int(t // self.step)
        if self.acc_k is None:
            self.acc_k = k
            return
        if k <= self.acc_k:
            return
        self._push(self.acc_k, self.acc)
        gap = k - self.acc_k - 1
        self.acc = Agg()
        self.acc_k = k
        if gap >= self.n:
            self.clear()
        else:
            for j in range(k - gap, k):
                self._push(j, Agg(), shift=True)

    def queue(self, q: float) -> None:
        """A queue depth reported now (into the open bucket's peak)."""
        if q > self.acc.qpeak:
            self.acc.qpeak = float(q)
            self.gen += 1

    def credit(self, t0: float, t1: float, cls: int) -> None:
        """Add the time [t0, t1) spent in state class `cls`, split at bucket edges."""
        if t1 <= t0:
            return
        span = (self.n + 2) * self.step
        if t1 - t0 > span:  # more than the whole retention: only the last part matters
            self.roll_to(t1 - span)
            t0 = t1 - span
        step = self.step
        while t0 < t1:
            self.roll_to(t0)
            end = (self.acc_k + 1) * step
            upto = end if end < t1 else t1
            self.acc.time[cls] += upto - t0
            if not self.live:
                self.win.time[cls] += upto - t0
            t0 = upto

    def absorb(self, closed: Agg) -> None:
        """A closed tier-0 bucket joins this (coarser) tier's open bucket, and its window."""
        self.gen += 1
        self.acc.merge_events(closed)
        self._add_events(closed, 1)

    def load_acc(self, agg: Agg) -> None:
        """Restore the open bucket (from disk)."""
        self.gen += 1
        if not self.live:
            self._add_events(self.acc, -1)
            for c in CLASSES:
                self.win.time[c] += agg.time[c] - self.acc.time[c]
            self._add_events(agg, 1)
        self.acc = agg

    def _add_events(self, agg: Agg, sign: int) -> None:
        win = self.win
        if agg.bins:
            self._add_bins(agg.bins.items(), sign)
        win.ok += sign * agg.ok
        win.fail += sign * agg.fail
        win.sum += sign * agg.sum
        for kind, n in agg.errors.items():
            left = win.errors.get(kind, 0) + sign * n
            if left > 0:
                win.errors[kind] = left
            else:
                win.errors.pop(kind, None)

    def _add_bins(self, pairs, sign: int) -> None:
        add = self.counts.add
        for k, c in pairs:
            add(k, sign * c)

    def _push(self, k: int, agg: Agg, shift: bool = False) -> None:
        slot = k % self.n
        if self.filled == self.n:
            self._expire(slot, k - self.n)
        else:
            self.filled += 1
        self.c_ok[slot] = agg.ok
        self.c_fail[slot] = agg.fail
        self.c_sum[slot] = agg.sum
        self.c_mn[slot] = agg.mn
        self.c_mx[slot] = agg.mx
        self.c_q[slot] = agg.qpeak
        self.c_sk[slot] = sketch.pack(agg.bins)
        if agg.errors:
            self.c_err[slot] = encode_errors(agg.errors)
        win = self.win
        for cls in CLASSES:
            self.c_time[cls][slot] = agg.time[cls]
            stored = self.c_time[cls][slot]  # float32: the window holds what expiry will take out
            win.time[cls] += stored if (self.live or shift) else stored - agg.time[cls]
        if self.live:
            self._add_events(agg, 1)
        if agg.ok:
            mn, mx = self.c_mn[slot], self.c_mx[slot]
            _slide(self.dq_mn, k, mn, lower=True)
            _slide(self.dq_mx, k, mx, lower=False)
            if round(mn, 3) != round(agg.mn, 3) or round(mx, 3) != round(agg.mx, 3):
                self.gen += 1  # what figures() shows of this bucket's min/max changed (float32)
        if agg.qpeak >= 0:
            _slide(self.dq_q, k, self.c_q[slot], lower=False)
            if self.c_q[slot] != agg.qpeak:
                self.gen += 1
        self.head = k

    def _expire(self, slot: int, k: int) -> None:
        if self.c_ok[slot] or self.c_fail[slot] or self.c_q[slot] >= 0 or self.c_sk[slot] or slot in self.c_err:
            self.gen += 1
        win = self.win
        win.ok -= self.c_ok[slot]
        win.fail -= self.c_fail[slot]
        win.sum -= self.c_sum[slot]
        for cls in CLASSES:
            win.time[cls] = max(0.0, win.time[cls] - self.c_time[cls][slot])
        if self.c_sk[slot]:
            self._add_bins(sketch.unpack(self.c_sk[slot]), -1)
        errs = self.c_err.pop(slot, None)
        if errs:
            for kind, n in decode_errors(errs).items():
                left = win.errors.get(kind, 0) - n
                if left > 0:
                    win.errors[kind] = left
                else:
                    win.errors.pop(kind, None)
        for dq in (self.dq_mn, self.dq_mx, self.dq_q):
            if dq and dq[0][0] <= k:
                dq.popleft()

    # -- reading --------------------------------------------------------------------
    def quantiles(self, qs: tuple[float, ...], extra: dict[int, int] | None = None) -> list[float | None]:
        """Window quantiles; `extra` bins (the live 1 s bucket) count in without being kept."""
        return self.counts.quantiles(qs, extra)

    def figures(self, time_extra: tuple[int, float], covered_s: float) -> dict[str, Any]:
        """The window's figures (plus the open bucket for the live tier, plus the state
        time not yet credited)."""
        a = self.acc
        win = self.win
        key = (self.gen, win.ok + a.ok, win.fail + a.fail) if self.live else self.gen
        if key != self.ev_key:
            self.ev, self.ev_key = self._events(), key
        count, avg, p50, p95, p99, mn, mx, success, errors, qpeak = self.ev
        wt = win.time
        if self.live:
            at = a.time
            time = [wt[0] + at[0], wt[1] + at[1], wt[2] + at[2], wt[3] + at[3], wt[4] + at[4], wt[5] + at[5]]
        else:
            time = list(wt)
        time[time_extra[0]] += time_extra[1]
        observed = sum(time)
        up = time[UP] + time[DEGRADED]  # the uptime() rule, inline
        known = up + time[DOWN]
        return {
            "count": count, "avg_ms": avg, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "min_ms": mn, "max_ms": mx,
            "success_rate": success,
            "uptime": up / known if known > 0 else None,
            "unknown_ratio": time[UNKNOWN] / observed if observed > 0 else None,
            "rpm": count / (covered_s / 60.0) if covered_s > 0 else None,
            "errors_by_kind": errors,  # shared by the records built from one `ev`: read only
            "queue_peak": qpeak,
            "up_s": time[UP], "down_s": time[DOWN], "unknown_s": time[UNKNOWN],
            # The other shares, in seconds like the three above (a share of the window is its
            # *_s over the sum of all six; kept as seconds so a record stays small).
            "loading_s": time[LOADING], "sleeping_s": time[SLEEPING], "degraded_s": time[DEGRADED],
        }

    def _events(self) -> tuple:
        """The window's event figures, in the order figures() unpacks them."""
        win = self.win
        ok, fail, total_sum = win.ok, win.fail, win.sum
        a = self.acc
        mn = min(self.dq_mn[0][1] if self.dq_mn else INF, a.mn)
        mx = max(self.dq_mx[0][1] if self.dq_mx else -INF, a.mx)
        qpeak = max(self.dq_q[0][1] if self.dq_q else -1.0, a.qpeak)
        errors = win.errors
        extra = None
        if self.live:
            ok += a.ok
            fail += a.fail
            total_sum += a.sum
            if a.errors:
                errors = dict(errors)
                for kind, n in a.errors.items():
                    errors[kind] = errors.get(kind, 0) + n
            extra = a.bins
        p50, p95, p99 = self.counts.quantiles(_P50_P95_P99, extra)
        count = ok + fail
        return (count, total_sum / ok if ok else None, p50, p95, p99,
                round(mn, 3) if ok else None,  # ring columns hold float32: show whole microseconds
                round(mx, 3) if ok else None,
                ok / count if count else None, dict(errors), qpeak if qpeak >= 0 else None)

    def buckets(self, since: float = -INF):
        """Closed buckets, oldest first, then the open one: (start, Agg, open?)."""
        for k in range(self.head - self.filled + 1, self.head + 1):
            if (k + 1) * self.step <= since:
                continue
            slot = k % self.n
            yield k * self.step, self.bucket_at(slot), False
        if self.acc_k is not None and (self.acc_k + 1) * self.step > since:
            yield self.acc_k * self.step, self.acc, True

    def bucket_at(self, slot: int) -> Agg:
        """A closed bucket, unpacked (for history, export and the store)."""
        a = Agg()
        a.ok, a.fail, a.sum = self.c_ok[slot], self.c_fail[slot], self.c_sum[slot]
        a.mn, a.mx, a.qpeak = self.c_mn[slot], self.c_mx[slot], self.c_q[slot]
        a.time = [self.c_time[c][slot] for c in CLASSES]
        a.errors = decode_errors(self.c_err.get(slot))
        a.bins = dict(sketch.unpack(self.c_sk[slot]))
        return a

    def oldest_start(self) -> float | None:
        if self.filled:
            return (self.head - self.filled + 1) * self.step
        return None if self.acc_k is None else self.acc_k * self.step


_P50_P95_P99 = (0.5, 0.95, 0.99)


def _slide(dq: deque, k: int, v: float, lower: bool) -> None:
    """Append bucket k's value to a monotonic deque: its front is the window's extreme."""
    if lower:
        while dq and dq[-1][1] >= v:
            dq.pop()
    else:
        while dq and dq[-1][1] <= v:
            dq.pop()
    dq.append((k, v))
