"""History on disk: one SQLite file in WAL mode, written every few seconds (at most 10).

- The file lives in the user data dir (platformdirs; MD_HEALTH_DATA_DIR or [aggregator]
  data_dir override it) as `metrics.sqlite3`.
- Retention bounds it: every flush deletes the buckets that left their tier's ring, so
  the file holds at most the configured tiers (about 1 MB for 5 services).
- A file we cannot read (corrupt, not SQLite, a newer schema) is renamed
  `metrics.sqlite3.quarantined-<time>` with a warning, and we start fresh.
- A directory we cannot write (read-only, disk full) raises StoreUnavailable; the
  aggregator then keeps running in memory and reports it (heartbeat `persistence`).

The boundary: the engine hands over plain rows (Engine.rows_to_persist) and rebuilds itself
from plain rows (Engine.load_rows); this module only writes and reads them. A flush counts
buckets as written only after its commit succeeded, so a failed commit loses nothing: the
next flush writes them again.

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

from .settings import label

log = logging.getLogger("aggregator.store")

# 2: buckets gained loading, sleeping and degraded seconds. A version-1 file is upgraded in
# place (three nullable columns added; its rows read as 0 s of each).
SCHEMA_VERSION = 2
FILENAME = "metrics.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    service TEXT NOT NULL, tier TEXT NOT NULL, k INTEGER NOT NULL,
    ok INTEGER, fail INTEGER, sum REAL, mn REAL, mx REAL, up REAL, down REAL, unk REAL, qpeak REAL,
    sketch BLOB, errors TEXT, loading REAL, sleeping REAL, degraded REAL,
    PRIMARY KEY (service, tier, k)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS services (
    service TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    service TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (service, name));
"""


# A row as Engine.rows_to_persist gives it: service, tier, k, then tiers.agg_row()'s columns.
BUCKET_COLUMNS = "service,tier,k,ok,fail,sum,mn,mx,up,down,unk,qpeak,sketch,errors,loading,sleeping,degraded"
UPGRADE_COLUMNS = ("loading", "sleeping", "degraded")  # added in schema 2


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
                self._upgrade()
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
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

    def _upgrade(self) -> None:
        """Bring an older file's tables to this schema (CREATE TABLE IF NOT EXISTS left them)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(buckets)")}
        for column in UPGRADE_COLUMNS:
            if column not in have:
                self.db.execute(f"ALTER TABLE buckets ADD COLUMN {column} REAL")

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
        """Write what changed since the last successful flush (the engine's plain rows).
        Raises StoreUnavailable on a write error; nothing counts as written until the commit
        succeeded, so the next flush writes those buckets again."""
        batch = engine.rows_to_persist(self._flushed)
        try:
            with self.db:
                self.db.executemany(f"INSERT OR REPLACE INTO buckets ({BUCKET_COLUMNS}) "
                                    f"VALUES ({','.join('?' * len(BUCKET_COLUMNS.split(',')))})",
                                    batch["buckets"])
                self.db.executemany("DELETE FROM buckets WHERE service=? AND tier=? AND k<?", batch["deletes"])
                self.db.executemany("INSERT OR REPLACE INTO services VALUES (?,?)",
                                    [(name, _pack(data)) for name, data in batch["services"]])
                self.db.execute("DELETE FROM alerts")
                self.db.executemany("INSERT INTO alerts VALUES (?,?,?)",
                                    [(a["service"], a["name"], _pack(a)) for a in batch["alerts"]])
        except sqlite3.Error as exc:  # disk full, file deleted under us, read-only remount ...
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None
        self._flushed.update(batch["marks"])
        return len(batch["buckets"])

    def forget(self, service: str) -> None:
        """Delete an expired service's rows (Engine._forget)."""
        try:
            with self.db:
                for table in ("buckets", "services", "alerts"):
                    self.db.execute(f"DELETE FROM {table} WHERE service=?", (service,))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None
        for key in [k for k in self._flushed if k[0] == service]:
            del self._flushed[key]

    # -- reading --------------------------------------------------------------------
    def restore(self, engine) -> int:
        """Load saved services, buckets and active alerts into a fresh engine. Returns the
        number of buckets."""
        services = {name: _unpack(data) for name, data in self.db.execute("SELECT service, data FROM services")}
        tier_names = [label(step) for step, _ in engine.settings.tiers]
        try:  # tiers no longer configured would otherwise sit in the file for ever
            with self.db:
                self.db.execute(f"DELETE FROM buckets WHERE tier NOT IN ({','.join('?' * len(tier_names))})",
                                tier_names)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from None
        buckets = {}
        for name in services:
            for tname in tier_names:
                buckets[(name, tname)] = self.db.execute(
                    f"SELECT {BUCKET_COLUMNS.split(',', 2)[2]} FROM buckets "
                    "WHERE service=? AND tier=? ORDER BY k", (name, tname)).fetchall()
        alerts = [_unpack(data) for (data,) in self.db.execute("SELECT data FROM alerts")]
        marks, loaded = engine.load_rows(services, buckets, alerts)
        self._flushed.update(marks)
        return loaded


def _pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
