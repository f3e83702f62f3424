"""Two switches for tests and the bench, both off unless an environment variable names a file:

- MD_HEALTH_UI_TRACE: each panel appends what it drew (one JSON line per change), so a
  GUI test can check what was really on screen next to its screenshot.
- MD_HEALTH_DRAW_TIMING: every draw() of the add-on's panels is timed; the times of one
  full redraw of a region (from its Connection Status panel to the next) are summed and
  written, one sample per line, when the add-on is disabled or Blender quits.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from .state import RT

TIMING_PATH = os.environ.get("MD_HEALTH_DRAW_TIMING", "")
_open: dict[int, float] = {}      # region pointer -> seconds drawn so far in its current redraw
samples: list[float] = []          # seconds per full draw of all panels in a region


def trace(panel: str, values: dict[str, Any]) -> None:
    if not RT.trace_path:
        return
    line = json.dumps({"panel": panel, **values}, sort_keys=True, default=str)
    if RT.trace_last.get(panel) == line:
        return
    RT.trace_last[panel] = line
    with open(RT.trace_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), "panel": panel, **values}, sort_keys=True, default=str) + "\n")


def timed(draw):
    """Wrap a panel's draw() with the timing hook when it is switched on (else as is)."""
    if not TIMING_PATH:
        return draw

    def wrapper(self, context):
        key = context.region.as_pointer() if context.region else 0
        if getattr(self, "bl_parent_id", "") == "" and key in _open:
            samples.append(_open.pop(key))  # the region starts a new full redraw
        t = time.perf_counter()
        try:
            return draw(self, context)
        finally:
            _open[key] = _open.get(key, 0.0) + time.perf_counter() - t

    wrapper.__wrapped__ = draw
    return wrapper


def flush() -> None:
    if not TIMING_PATH or not samples:
        return
    with open(TIMING_PATH, "a", encoding="utf-8") as f:
        for s in samples:
            f.write(f"{s * 1000:.4f}\n")
    samples.clear()
