"""The charts and state icons as Blender preview images, rendered from the timer.

`update()` runs in the timer (after new data, and once a second for the moving time
axis). It re-renders a picture only when its signature (data, range, size, the time
axis moved by a few pixels) changed, the stalest first, and at most `PIXELS_PER_TICK`
pixels per call (one picture at least), so no tick stalls Blender and no picture starves
behind others that change on every tick. `draw()` only looks pictures up by key: `icon()`
never renders.

A picture is rendered at the pixel size it is shown at (see `side()`), per region width,
so its text is crisp in a narrow sidebar, a wide editor and at UI scale 2. Only the
pictures some panel can show now are kept (`_forget`).
"""
from __future__ import annotations

import time

import bpy

from . import view
from .state import RT

try:  # numpy ships inside Blender from blender.org; a distribution's Blender may lack it
    from . import charts
    MISSING = ""
except ImportError:
    charts = None
    MISSING = ("Charts need numpy in Blender's Python (it ships with Blender from blender.org; "
               "on Debian: apt install python3-numpy)")

PIXELS_PER_TICK = 2 * 380 * 380  # rendered per timer call at most (about 9 ms of numpy)
MIN_POINTS = 2         # fewer points than this: the panel says so instead of a chart
REGIONS = {("VIEW_3D", "UI"), ("SEQUENCE_EDITOR", "UI"), ("PROPERTIES", "WINDOW")}
COLUMN = 420           # px at UI scale 1: the width a service box aims at in a wide editor
GAP = 40               # px at UI scale 1 that a box's frame and the grid take beside its chart
SERVICE_MAX = 640      # px at UI scale 1: a per-service chart bigger than this says no more
HISTORY_MAX = 720
STATE_COLOURS = {"connected": "GREEN", "connecting": "YELLOW", "disconnected": "RED", "error": "ORANGE",
                 "loading": "YELLOW", "sleeping": "SAGE", "degraded": "ORANGE",
                 "unknown": "GREY", "offline": "GREY", "missing": "GREY"}  # names in charts.py

_pcoll = None
_signatures: dict[str, object] = {}
_points: dict[str, int] = {}  # key -> points the last look found (for "not enough data")
_rendered: dict[str, float] = {}  # key -> when it was last rendered (monotonic)


def open_previews() -> None:
    global _pcoll
    import bpy.utils.previews

    close_previews()
    _pcoll = bpy.utils.previews.new()
    if charts is None:
        return
    for kind, colour in STATE_COLOURS.items():
        _put(f"state.{kind}", charts.state_icon(_icon_shape(kind), getattr(charts, colour), 32), 32)


def close_previews() -> None:
    global _pcoll
    if _pcoll is not None:
        bpy.utils.previews.remove(_pcoll)
        _pcoll = None
    _signatures.clear()
    _points.clear()
    _rendered.clear()


def _icon_shape(kind: str) -> str:
    return kind if kind in ("connected", "connecting", "disconnected", "error", "loading", "sleeping",
                            "degraded") else "unknown"


def _put(key: str, pixels, size: int) -> None:
    preview = _pcoll.get(key) or _pcoll.new(key)
    preview.image_size = preview.icon_size = (size, size)
    try:
        preview.image_pixels_float.foreach_set(pixels)
        preview.icon_pixels_float.foreach_set(pixels)
    except (AttributeError, TypeError):  # an older bpy_prop_array without foreach_set
        preview.image_pixels_float = pixels.tolist()
        preview.icon_pixels_float = pixels.tolist()


# -- what draw() reads ------------------------------------------------------------------------------
def ui_scale() -> float:
    """Blender's effective UI scale (0 without a window, in background mode: then 1)."""
    return bpy.context.preferences.system.ui_scale or 1.0


def charted(state, client) -> list:
    """The services Health Monitoring shows a box (and a chart) for: those that answer."""
    return [item for item in state.services if item.state in view.ANSWERING and item.name in client.services]


def columns(region_width: int, ui_scale: float, boxes: int) -> int:
    """Service boxes side by side in a wide editor: the count whose columns come nearest
    COLUMN px each, and no more than there are boxes (Blender's grid_flow then widens its
    columns), so a chart fills its column instead of leaving a gap beside it."""
    inner = region_width - 44 * ui_scale
    return max(1, min(3, boxes, round(inner / (COLUMN * ui_scale))))


def _fit(inner: float, cap: float) -> int:
    """Rounded to 8 px, so a small resize does not re-render every picture."""
    return max(96, int(min(inner, cap)) // 8 * 8)


def side(region_width: int, ui_scale: float, boxes: int) -> int:
    """The pixel size of a service's chart in a region this wide: its column's inner width, capped."""
    n = columns(region_width, ui_scale, boxes)
    inner = (region_width - 44 * ui_scale) / n - (GAP * ui_scale if n > 1 else 0)
    return _fit(inner, SERVICE_MAX * ui_scale)


def history_side(region_width: int, ui_scale: float) -> int:
    """The pixel size of the Metrics History sub-panel's chart: the panel's inner width, capped."""
    return _fit(region_width - 44 * ui_scale, HISTORY_MAX * ui_scale)


def icon(key: str) -> int:
    """The icon id of a rendered picture, or 0 if there is none (yet)."""
    preview = _pcoll.get(key) if _pcoll is not None else None
    return preview.icon_id if preview is not None else 0


def points(key: str) -> int:
    return _points.get(key, 0)


def state_icon(state: str) -> int:
    return icon(f"state.{state if state in STATE_COLOURS else 'unknown'}")


def state_icon_args(state: str) -> dict:
    """Keyword arguments for a label's icon: the coloured picture, else Blender's icon."""
    icon_id = state_icon(state)
    return {"icon_value": icon_id} if icon_id else {"icon": view.STATES.get(state, view.STATES["unknown"])[0]
                                                    if state != "offline" else "QUESTION"}


def chart_key(kind: str, name: str, rng: str, size: int) -> str:
    return f"{kind}.{name}.{rng}.{size}"


# -- rendering (the timer) ----------------------------------------------------------------------------
def service_series(name: str, rng: str) -> dict:
    """The aggregator's history for the range, else the add-on's own recent samples (5 m)."""
    series = view.history_series(RT.client.history if RT.client else {}, name, rng)
    if series or rng != "5m":
        return series
    samples = list(RT.samples.get(name) or ())
    return {"t": [s[0] for s in samples], "p50_ms": [s[1] for s in samples], "p95_ms": [s[2] for s in samples],
            "success_rate": [s[3] for s in samples]}


def _sizes(wm, boxes: int) -> set[tuple[int, bool]]:
    scale = ui_scale()
    widths = {region.width for window in wm.windows for area in window.screen.areas for region in area.regions
              if (area.type, region.type) in REGIONS and region.width > 1} or {340}
    return {(side(w, scale, boxes), False) for w in widths} | {(history_side(w, scale), True) for w in widths}


def update(wm) -> bool:
    """Re-render what changed (at most PIXELS_PER_TICK pixels). True if a picture changed."""
    client = RT.client
    if _pcoll is None or charts is None or client is None or not client.online:
        return False
    state = getattr(wm, "movie_director_health", None)
    if state is None:
        return False
    rng = state.metrics_range
    seconds = view.RANGE_SECONDS[rng]
    now = time.time()
    span = (now - seconds, now)
    scale = ui_scale()
    limit = RT.thresholds["p95_ms"]
    todo, wanted = [], set()
    names = [item.name for item in state.services if item.name in client.services]
    series = {name: service_series(name, rng) for name in names}
    # Points inside the range, per service: the same for every size (counted once, not per size).
    counts = {name: charts.enough(s.get("t") or [], s.get("p95_ms") or [], span) for name, s in series.items()}
    boxed = [item.name for item in charted(state, client)]  # a trend chart only where a box shows it
    for size, big in sorted(_sizes(wm, len(boxed))):
        # The time axis moves by one step every ~4 px of the picture.
        moved = int(now / max(1.0, seconds / max(1, size / 4)))
        if big:
            rows = [(view.label_of(n), s.get("t") or [], s.get("p95_ms") or [], s.get("success_rate") or [])
                    for n, s in series.items() if counts[n] >= MIN_POINTS]
            key = chart_key("history", "all", rng, size)
            wanted.add(key)
            _points[key] = len(rows)
            sig = (moved, limit, tuple((r[0], len(r[1]), r[1][-1] if r[1] else None) for r in rows))
            if rows and _signatures.get(key) != sig:
                todo.append((key, sig, size, lambda rows=rows, size=size: charts.compare_chart(
                    rows, span, size, scale, limit)))
            continue
        for name in boxed:
            s = series[name]
            t = s.get("t") or []
            key = chart_key("trend", name, rng, size)
            wanted.add(key)
            n = _points[key] = counts[name]
            sig = (moved, limit, len(t), t[-1] if t else None)
            if n >= MIN_POINTS and _signatures.get(key) != sig:
                todo.append((key, sig, size, lambda s=s, t=t, size=size: charts.response_chart(
                    t, s.get("p50_ms") or [], s.get("p95_ms") or [], s.get("success_rate") or [], span, size,
                    scale, limit)))
    _forget(wanted)
    todo.sort(key=lambda job: _rendered.get(job[0], -1.0))
    spent = 0
    for key, sig, size, render in todo:
        if spent and spent + size * size > PIXELS_PER_TICK:
            break
        spent += size * size
        _put(key, render(), size)
        _signatures[key] = sig
        _rendered[key] = time.monotonic()
    return bool(todo)


def _forget(wanted: set[str]) -> None:
    """Drop every chart no panel can show now (another width, range or service): dragging
    a sidebar's edge would otherwise keep a picture of up to 640x640 px per width passed."""
    for key in {*_pcoll.keys(), *_points} - wanted:
        if key.startswith("state."):
            continue
        if key in _pcoll:
            del _pcoll[key]  # releases the preview (dict.pop would not)
        _signatures.pop(key, None)
        _points.pop(key, None)
        _rendered.pop(key, None)
