"""Writing an export the monitor served (CSV or JSON) to the file the artist chose."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy


class ExportError(Exception):
    pass


TIER = {"5m": "1s", "1h": "10s", "24h": "1m"}  # the tier that covers each range


def write_export(reply: dict[str, Any], filepath: str, fmt: str) -> str:
    """Write an export reply to a file. Returns the sentence to report."""
    if not reply.get("ok"):
        raise ExportError(str(reply.get("error") or "the monitor refused the export"))
    content = reply.get("content")
    if not isinstance(content, str):
        raise ExportError("the monitor's reply has no content")
    path = Path(bpy.path.abspath(filepath))
    if path.suffix.lower() != f".{fmt}":
        path = path.with_suffix(f".{fmt}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", newline="")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    rows = reply.get("rows")
    return f"Exported {rows if isinstance(rows, int) else 'the'} rows as {fmt.upper()} to {path}"
