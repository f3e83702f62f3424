"""Two switches for tests and the bench, both off unless an environment variable names a file:

- MD_HEALTH_UI_TRACE: each panel appends what it drew (one JSON line per change), so a
  GUI test can check what was really on screen next to its screenshot.
- MD_HEALTH_DRAW_TIMING: every draw() of the add-on's panels is timed. The draws of one
  full redraw of a region (from its top panel to the next time the top panel draws) are
  one sample: the summed draw() time, the CPU time of Blender's main thread in those
  draws (wall time minus what the OS gave to other threads and processes meanwhile), when
  that redraw began (perf_counter), and which panels drew. Samples are written, one line
  of milliseconds each, when the add-on is disabled or Blender quits; the bench reads them
  in-process (`close`, `samples`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from .state import RT

TIMING_PATH = os.environ.get("MD_HEALTH_DRAW_TIMING", "")
_open: dict[int, list] = {}        # region pointer -> [began, seconds drawn, panel ids, CPU seconds]
samples: list[float] = []          # seconds per full draw of all panels in a region
last_panels: dict[int, set] = {}   # region pointer -> the panels its last full redraw drew


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
        t, cpu = time.perf_counter(), time.thread_time()
        if not getattr(self, "bl_parent_id", ""):  # the top panel: a new full redraw of this region
            close(key)
            _open[key] = [t, 0.0, set(), 0.0]
        try:
            return draw(self, context)
        finally:
            entry = _open.setdefault(key, [t, 0.0, set(), 0.0])
            entry[1] += time.perf_counter() - t
            entry[3] += time.thread_time() - cpu
            entry[2].add(self.bl_idname)

    wrapper.__wrapped__ = draw
    return wrapper


def close(key: int) -> tuple[float, float, float] | None:
    """End the region's current redraw: (seconds in draw(), seconds since it began, CPU
    seconds in draw()), or None."""
    entry = _open.pop(key, None)
    if entry is None:
        return None
    samples.append(entry[1])
    last_panels[key] = entry[2]
    return entry[1], time.perf_counter() - entry[0], entry[3]


def flush() -> None:
    for key in list(_open):
        close(key)
    if not TIMING_PATH or not samples:
        return
    with open(TIMING_PATH, "a", encoding="utf-8") as f:
        for s in samples:
            f.write(f"{s * 1000:.4f}\n")
    samples.clear()
