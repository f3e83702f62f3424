"""CSV and JSON export of tier buckets (columns documented in docs/metrics.md).

Used by `md-health export` and by `request.export` on the bus (the Blender export button).
The JSON is strict (json.dumps(allow_nan=False)): any JSON parser reads it.
CSV cells that a spreadsheet would read as a formula (starting with = + - @ tab or CR)
are prefixed with a single quote, the OWASP "CSV injection" advice: a service name or an
error kind comes from a probe, and a probe is not trusted to write formulas.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from typing import Any

from .settings import parse_duration

COLUMNS = ("time", "ts", "service", "tier", "complete", "count", "ok", "failed", "success_rate", "avg_ms",
           "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "up_s", "down_s", "unknown_s", "loading_s",
           "sleeping_s", "degraded_s", "uptime", "queue_peak", "errors")
FORMATS = ("csv", "json")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def export(engine, fmt: str, tier: str, since: str | float, service: str | None = None) -> tuple[str, int]:
    """(content, number of rows). Raises ValueError with a readable message on bad arguments."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: csv, json)")
    since_s = parse_duration(since)
    rows = engine.rows(tier, since_s, service)
    for row in rows:
        row["time"] = _iso(row["ts"])
        for key, value in row.items():
            # Strict JSON (contract C7) has no NaN or infinity, and a spreadsheet reads "nan" as
            # text: a figure that is not a finite number is unknown, written as null / empty.
            if value.__class__ is float and not math.isfinite(value):
                row[key] = None
    if fmt == "json":
        doc = {"format": "md-health-export", "version": 1, "tier": tier, "since_s": since_s,
               "service": service, "generated": engine.now(), "columns": list(COLUMNS),
               "rows": [{c: row[c] for c in COLUMNS} for row in rows]}
        return json.dumps(doc, indent=1, allow_nan=False), len(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return out.getvalue(), len(rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # errors by kind
        value = ";".join(f"{k}={n}" for k, n in value.items())
    if isinstance(value, float):
        return repr(round(value, 6))
    return escape_cell(str(value))
