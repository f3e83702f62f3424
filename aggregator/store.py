"""History on disk: one SQLite file in WAL mode, written every few seconds (at most 10).

- The file lives in the user data dir (platformdirs; MD_HEALTH_DATA_DIR or [aggregator]
  data_dir override it) as `metrics.sqlite3`.
- Retention bounds it: every flush deletes the buckets that left their tier's ring, so
  the file holds at most the configured tiers (about 1 MB for 5 services).
- A file we cannot read (corrupt, not SQLite, a newer schema) is renamed
  `metrics.sqlite3.quarantined-<time>` with a warning, and we start fresh.
- A directory we cannot write (read-only, disk full) raises StoreUnavailable; the
  aggregator then keeps running in memory and reports it (heartbeat `persistence`).

WAL with synchronous=NORMAL survives the process being killed (kill -9) without losing
committed transactions; only an OS crash can lose the last commits, which is acceptable
for monitoring history.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack

from . import sketch
from .settings import label
from .tiers import UNKNOWN, Agg, decode_errors, encode_errors

log = logging.getLogger("aggregator.store")

SCHEMA_VERSION = 1
FILENAME = "metrics.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    service TEXT NOT NULL, tier TEXT NOT NULL, k INTEGER NOT NULL,
    ok INTEGER, fail INTEGER, sum REAL, mn REAL, mx REAL, up REAL, down REAL, unk REAL, qpeak REAL,
    sketch BLOB, errors TEXT,
    PRIMARY KEY (service, tier, k)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS services (
    service TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class StoreUnavailable(RuntimeError):
    """The data directory cannot be written: run in memory."""


class Store:
    def __init__(self, data_dir: Path, quarantine: str | None = None) -> None:
        """Open (or create) the history file. `quarantine`: move the existing file aside for
        this reason first (restore() found it unreadable past the quick check)."""
        self.dir = Path(data_dir)
        self.path = self.dir / FILENAME
        self.quarantined: Path | None = None
        self._flushed: dict[tuple[str, str], int] = {}  # (service, tier) -> newest closed bucket written
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the data directory {self.dir}: {exc.strerror or exc}") from None
        if self.path.exists():
            problem = quarantine or self._check_existing()
            if problem:
                self._quarantine(problem)
        try:
            self.db = self._connect()
            with self.db:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=2.0,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Writes are small and mostly appends: a 512 KiB page cache (default 2 MiB) is plenty,
        # and it keeps the process's memory flat once the cache has filled.
        db.execute("PRAGMA cache_size=-512")
        return db

    def _check_existing(self) -> str | None:
        """Why the existing file cannot be used, or None if it can."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2.0)
            try:
                ok = db.execute("PRAGMA quick_check").fetchone()
                if not ok or ok[0] != "ok":
                    return f"damaged ({ok[0] if ok else 'no answer'})"
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "meta" not in tables:
                    return "not a Movie Director health history (no meta table)"
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row and str(row[0]).isdigit() else None
                if version is None:
                    return "without a schema version"  # read as "history file X is <this>"
                if version > SCHEMA_VERSION:
                    return f"from a newer version (schema {version}, this one reads {SCHEMA_VERSION})"
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            return f"unreadable ({exc})"
        return None

    def _quarantine(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{FILENAME}.quarantined-{stamp}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(FILENAME + suffix)
                if side.exists():
                    side.replace(target.with_name(target.name + suffix))
        except OSError as exc:
            raise StoreUnavailable(f"{self.path} is {problem}, and it cannot be moved aside: {exc}") from None
        self.quarantined = target
        log.warning("history file %s is %s; moved it aside to %s and starting with empty history",
                    self.path, problem, target)

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    # -- writing --------------------------------------------------------------------
    def flush(self, engine) -> int:
        """Write what changed since the last flush. Raises StoreUnavailable on a write error."""
        now = engine._time()
        rows, deletes, services = [], [], []
        for name, svc in engine.services.items():
            series = svc.series
            series.advance(now)
            series._credit(now)  # so the open buckets on disk hold their state time up to now
            for tier in series.tiers:
                tname = tier.name
                oldest = tier.head - tier.filled + 1
                start = max(oldest, self._flushed.get((name, tname), oldest - 1) + 1)
                for k in range(start, tier.head + 1):
                    rows.append(_row(name, tname, k, tier.bucket_at(k % tier.n)))
                if tier.acc_k is not None:
                    rows.append(_row(name, tname, tier.acc_k, tier.acc))
                self._flushed[(name, tname)] = tier.head
                deletes.append((name, tname, oldest))
            services.append((name, msgpack.packb(_service_data(svc, series), use_bin_type=True)))
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO buckets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                self.db.executemany("DELETE FROM buckets WHERE service=? AND tier=? AND k<?", deletes)
                self.db.executemany("INSERT OR REPLACE INTO services VALUES (?,?)", services)
        except sqlite3.Error as exc:  # disk full, file deleted under us, read-only remount ...
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None
        return len(rows)

    # -- reading --------------------------------------------------------------------
    def restore(self, engine) -> int:
        """Load saved services and buckets into a fresh engine. Returns the number of buckets."""
        from .engine import STATE_UNKNOWN, Series, ServiceState  # noqa: F401 (cycle-free at call time)

        loaded = 0
        names = {name: _unpack(data) for name, data in self.db.execute("SELECT service, data FROM services")}
        tier_names = [label(step) for step, _ in engine.settings.tiers]
        try:  # tiers no longer configured would otherwise sit in the file for ever
            with self.db:
                self.db.execute(f"DELETE FROM buckets WHERE tier NOT IN ({','.join('?' * len(tier_names))})",
                                tier_names)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None
        for name, data in names.items():
            if not isinstance(data, dict):
                continue
            per_tier = {}
            for tname in tier_names:
                per_tier[tname] = self.db.execute(
                    "SELECT k, ok, fail, sum, mn, mx, up, down, unk, qpeak, sketch, errors FROM buckets "
                    "WHERE service=? AND tier=? ORDER BY k", (name, tname)).fetchall()
            first_seen = float(data.get("first_seen") or engine._time())
            series = Series(engine.settings.tiers, first_seen)
            for tier in series.tiers:
                for row in per_tier.get(tier.name, []):
                    tier.roll_to(row[0] * tier.step)
                    if tier.acc_k == row[0]:
                        tier.load_acc(_agg(row))
                        loaded += 1
            series.first_seen = first_seen
            series.credited = max(float(data.get("credited") or first_seen), first_seen)
            series.cls = UNKNOWN  # nobody watched while the aggregator was down
            series.live_end = (series.live.acc_k + 1) * series.live.step
            for t in series.tiers:
                self._flushed[(name, t.name)] = t.head
            svc = ServiceState(name, series)
            status = data.get("status") if isinstance(data.get("status"), dict) else {}
            svc.status = dict(status, state=STATE_UNKNOWN, error="the aggregator restarted; waiting for this "
                              "service's probe to report", error_kind="probe_dead")
            svc.last_check = float(data.get("last_check") or 0.0)
            svc.last_change = float(data.get("last_change") or 0.0)
            svc.job_times.extend(float(x) for x in data.get("job_times") or [])
            for model, u in (data.get("usage") or {}).items():
                svc.usage[model] = [int(u[0]), int(u[1]), int(u[2]), {int(k): int(c) for k, c in u[3]}, u[4]]
            svc.usage_since = float(data.get("usage_since") or 0.0)
            engine.services[name] = svc
        return loaded


def _row(service: str, tier: str, k: int, a: Agg) -> tuple:
    return (service, tier, k, a.ok, a.fail, a.sum, a.mn if a.mn != float("inf") else None,
            a.mx if a.mx != float("-inf") else None, a.time[0], a.time[1], a.time[2], a.qpeak,
            sketch.pack(a.bins), encode_errors(a.errors) or None)


def _agg(row: tuple) -> Agg:
    a = Agg()
    (_, a.ok, a.fail, a.sum, mn, mx, up, down, unk, qpeak, blob, errors) = row
    a.mn = float("inf") if mn is None else mn
    a.mx = float("-inf") if mx is None else mx
    a.time = [up or 0.0, down or 0.0, unk or 0.0]
    a.qpeak = -1.0 if qpeak is None else qpeak
    a.bins = dict(sketch.unpack(blob))
    a.errors = decode_errors(errors)
    return a


def _service_data(svc, series) -> dict[str, Any]:
    return {
        "status": svc.status, "last_check": svc.last_check, "last_change": svc.last_change,
        "first_seen": series.first_seen, "credited": series.credited,
        "job_times": list(svc.job_times),
        "usage": {m: [u[0], u[1], u[2], list(u[3].items()), u[4]] for m, u in svc.usage.items()},
        "usage_since": svc.usage_since,
    }


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
