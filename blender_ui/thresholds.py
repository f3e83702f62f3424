"""Alert thresholds from the add-on's preferences, written into the monitor's config file.

The aggregator reads `[alerts.default]` of its config (docs/configuration.md) when it
starts; the add-on sets the keys it owns there and leaves every other line as it was.
Pure Python (no bpy), so it is tested on its own.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SECTION = "alerts.default"


def config_path() -> Path | None:
    """The file the monitor reads: MD_HEALTH_CONFIG, else its per-user default."""
    if os.environ.get("MD_HEALTH_CONFIG"):
        return Path(os.environ["MD_HEALTH_CONFIG"])
    from . import deps  # the bus package knows the per-user default

    try:
        import importlib

        return importlib.import_module(f"{deps.BUS_PACKAGE}.config").default_path()
    except Exception:  # noqa: BLE001 - platformdirs missing in this Blender's Python
        return None


def set_keys(text: str, values: dict[str, float]) -> str:
    """`text` with `key = value` set for each key inside [alerts.default] (added if absent)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{SECTION}]"), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"[{SECTION}]")
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    todo = dict(values)
    for i in range(start + 1, end):
        m = re.match(r"\s*([A-Za-z0-9_]+)\s*=", lines[i])
        if m and m.group(1) in todo:
            lines[i] = f"{m.group(1)} = {_fmt(todo.pop(m.group(1)))}"
    lines[end:end] = [f"{k} = {_fmt(v)}" for k, v in todo.items()]
    return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write(path: Path, values: dict[str, float]) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(set_keys(old, values), encoding="utf-8")
    os.replace(tmp, path)
