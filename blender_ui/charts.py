"""The pictures the panels show, rendered with numpy (which ships inside every Blender).

Each function returns a flat float32 RGBA array, rows bottom-up, exactly what an
`ImagePreview`'s `image_pixels_float` takes; `pictures.py` renders them from the timer,
only when their data changed, never from `draw()`. Blender shows a preview picture in a
square, so every picture here is square and uses the whole square.

Colours: the seed's scheme (Connected green, Connecting yellow, Disconnected red, Error
orange). Blender's theme has no foreground colours for states (its Info colours are
background tints), so they are fixed here; the words and icons next to them carry the
meaning, colour only reinforces it.
"""
from __future__ import annotations

import base64
import math
import zlib
from typing import Sequence

import numpy as np

from . import glyphs

BG = (0.13, 0.13, 0.13, 1.0)
PLOT = (0.10, 0.10, 0.10, 1.0)
GRID = (0.24, 0.24, 0.24, 1.0)
AXIS_TEXT = (0.72, 0.72, 0.72, 1.0)
P95 = (1.00, 0.60, 0.20, 1.0)     # orange line
P50 = (0.40, 0.70, 1.00, 1.0)     # blue line
LIMIT = (0.85, 0.85, 0.85, 1.0)   # the alert threshold, dashed
OK = (0.28, 0.62, 0.32, 1.0)      # a bucket whose checks all succeeded (dimmer than the state green)
FAIL = (0.95, 0.22, 0.22, 1.0)    # a bucket with failed checks
NO_DATA = (0.18, 0.18, 0.18, 1.0)

# The four state colours of the seed, used for the state icons (and nowhere else, so a
# test can find them on screen).
GREEN = (0.20, 0.85, 0.30, 1.0)
YELLOW = (1.00, 0.85, 0.10, 1.0)
RED = (1.00, 0.15, 0.15, 1.0)
ORANGE = (1.00, 0.50, 0.00, 1.0)
GREY = (0.60, 0.60, 0.60, 1.0)
SAGE = (0.52, 0.68, 0.56, 1.0)    # sleeping: healthy but idle, a green gone grey


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- text -------------------------------------------------------------------------------------
_FONTS: dict[int, tuple[int, int, list[int], list[np.ndarray]]] = {}


def _font(size: int):
    if size not in _FONTS:
        spec = glyphs.SIZES[size]
        h, widths = spec["height"], spec["advance"]
        data = np.frombuffer(zlib.decompress(base64.b64decode("".join(spec["alpha"]))), dtype=np.uint8)
        out, at = [], 0
        for w in widths:
            out.append(data[at:at + h * w].reshape(h, w).astype(np.float32) / 255.0)
            at += h * w
        _FONTS[size] = (h, spec["ascent"], widths, out)
    return _FONTS[size]


def font_size(scale: float) -> int:
    return 22 if scale >= 1.5 else 11


def text_width(s: str, size: int) -> int:
    _, _, widths, _ = _font(size)
    return sum(widths[(ord(c) - 32) if 32 <= ord(c) < 127 else 31] for c in s)


def text_height(size: int) -> int:
    return _font(size)[0]


class Canvas:
    """An RGBA picture, rows top-down while drawing; `pixels()` flips it for Blender."""

    def __init__(self, w: int, h: int, bg=BG) -> None:
        self.w, self.h = w, h
        self.a = np.empty((h, w, 4), dtype=np.float32)
        self.a[:] = bg

    def rect(self, x0: int, y0: int, x1: int, y1: int, c) -> None:
        x0, x1 = max(0, x0), min(self.w, x1)
        y0, y1 = max(0, y0), min(self.h, y1)
        if x0 < x1 and y0 < y1:
            self.a[y0:y1, x0:x1] = c

    def hline(self, y: int, x0: int, x1: int, c, dash: int = 0) -> None:
        if not 0 <= y < self.h:
            return
        xs = np.arange(max(0, x0), min(self.w, x1))
        if dash:
            xs = xs[(xs // dash) % 2 == 0]
        self.a[y, xs] = c

    def spans(self, x0: int, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray, c) -> None:
        """Fill, for each column x0+i where valid[i], the rows lo[i]..hi[i] (inclusive)."""
        # Only the pixels drawn are touched (a line is a few rows per column), so a big
        # picture costs what its lines cost, not width x height per line.
        xs = np.arange(len(lo))[valid] + x0
        lo = np.clip(lo[valid], 0, self.h - 1)
        hi = np.clip(hi[valid], 0, self.h - 1)
        keep = (xs >= 0) & (xs < self.w) & (hi >= lo)
        xs, lo, hi = xs[keep], lo[keep], hi[keep]
        if not len(xs):
            return
        n = hi - lo + 1
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        self.a[starts + np.arange(int(n.sum())), np.repeat(xs, n)] = c

    def text(self, x: int, y: int, s: str, c, size: int) -> int:
        """Draw `s` with its top-left at (x, y); returns the x after it."""
        h, _, widths, bitmaps = _font(size)
        col = np.asarray(c, dtype=np.float32)
        for ch in s:
            k = (ord(ch) - 32) if 32 <= ord(ch) < 127 else 31  # '?' for anything else
            g, w = bitmaps[k], widths[k]
            gx0, gy0 = max(0, -x), max(0, -y)
            gx1, gy1 = min(w, self.w - x), min(h, self.h - y)
            if gx0 < gx1 and gy0 < gy1:
                alpha = g[gy0:gy1, gx0:gx1, None]
                dst = self.a[y + gy0:y + gy1, x + gx0:x + gx1]
                dst[:] = dst * (1 - alpha) + col * alpha
            x += w
        return x

    def pixels(self) -> np.ndarray:
        return np.ascontiguousarray(self.a[::-1]).ravel()


# -- scales -------------------------------------------------------------------------------------
def nice_top(vmax: float) -> tuple[float, float]:
    """(top, step): a round axis top at or above vmax, and its grid step (3 to 5 lines)."""
    if not _finite(vmax) or vmax <= 0:
        return 1.0, 0.25
    raw = vmax / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(vmax / step - 1e-9), step


def ms_label(v: float) -> str:
    if v >= 1000:
        s = f"{v / 1000:.1f}".rstrip("0").rstrip(".")
        return f"{s} s"
    return f"{v:.0f} ms" if v >= 1 or v == 0 else f"{v:.1f} ms"


def span_label(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h ago"
    return f"{seconds / 60:g} min ago"


def columns(times: Sequence, values: Sequence, span: tuple[float, float], w: int, reduce=max) -> np.ndarray:
    """One value per pixel column (NaN where none): a column is a slice of time, so gaps
    stay empty and the newest point is at the right edge, however few points there are."""
    t0, t1 = span
    out = np.full(w, np.nan, dtype=np.float64)
    if t1 <= t0:
        return out
    ts, vs = _inside(times, values, span)
    if not len(ts):
        return out
    xs = np.minimum(w - 1, ((ts - t0) / (t1 - t0) * w).astype(int))
    if reduce is max:
        np.fmax.at(out, xs, vs)
    else:
        np.fmin.at(out, xs, vs)
    return out


def enough(times: Sequence, values: Sequence, span: tuple[float, float]) -> int:
    """How many points of `values` fall inside the span (a chart needs two)."""
    return len(_inside(times, values, span)[0])


_PLAIN = {float, int, type(None)}


def _floats(seq: Sequence) -> np.ndarray:
    """A series as floats, NaN for a gap (None) or anything that is not a number (a bool or
    a string too, which numpy would take as one). A plain series, floats and gaps, numpy
    converts at C speed; only one with something odd in it is walked value by value."""
    if {type(v) for v in seq} <= _PLAIN:
        return np.asarray(seq, dtype=np.float64)  # None becomes NaN
    return np.array([float(v) if _finite(v) else np.nan for v in seq], dtype=np.float64)


def _inside(times: Sequence, values: Sequence, span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The (time, value) pairs with both finite and the time inside the span, as arrays."""
    n = min(len(times), len(values))
    ts, vs = _floats(times[:n]), _floats(values[:n])
    keep = np.isfinite(ts) & np.isfinite(vs) & (ts >= span[0]) & (ts <= span[1])
    return ts[keep], vs[keep]


def _held(vals: np.ndarray) -> np.ndarray:
    """Each point's value carried over the empty columns up to the next point (as `_line`
    joins them), except across a gap much longer than the usual spacing: a strip that
    shows a bucket's result for the whole bucket, not one pixel of it."""
    n = len(vals)
    valid = ~np.isnan(vals)
    if valid.sum() < 2:
        return vals
    idx = np.arange(n)
    have = idx[valid]
    max_gap = max(2.0, 2.5 * float(np.median(np.diff(have))))
    prev_i = np.maximum.accumulate(np.where(valid, idx, -1))
    next_i = np.minimum.accumulate(np.where(valid, idx, n)[::-1])[::-1]
    inside = ~valid & (prev_i >= 0) & (next_i < n) & ((next_i - prev_i) <= max_gap)
    out = vals.copy()
    out[inside] = vals[prev_i[inside]]
    return out


def _line(cv: Canvas, x0: int, y_of, vals: np.ndarray, c, width: int) -> None:
    """A polyline through the columns' values. Neighbouring points are joined across the
    empty columns between them (the history is coarser than the pixels), but a gap much
    longer than the usual spacing stays open: no data is not zero, and not "the same"."""
    n = len(vals)
    valid = ~np.isnan(vals)
    if not valid.any():
        return
    idx = np.arange(n)
    have = idx[valid]
    spacing = float(np.median(np.diff(have))) if len(have) > 1 else 1.0
    max_gap = max(2.0, 2.5 * spacing)
    prev_i = np.maximum.accumulate(np.where(valid, idx, -1))
    next_i = np.minimum.accumulate(np.where(valid, idx, n)[::-1])[::-1]
    inside = (prev_i >= 0) & (next_i < n) & ((next_i - prev_i) <= max_gap)
    draw = valid | inside
    y = y_of(np.interp(idx, have, vals[valid])).astype(int)
    prev = np.concatenate([[y[0]], y[:-1]])
    prev = np.where(np.concatenate([[False], draw[:-1]]), prev, y)
    lo = np.minimum(y, prev) - (width - 1) // 2
    hi = np.maximum(y, prev) + width // 2
    cv.spans(x0, lo, hi, draw, c)


# -- the pictures ---------------------------------------------------------------------------------
def _y_grid(cv: Canvas, y_of, top: float, step: float, x0: int, x1: int, gap: int, size: int) -> None:
    """A grid line at every `step` from 0 to `top`, its value written `gap` px left of the plot."""
    th = text_height(size)
    k = 0
    while k * step <= top + 1e-9:
        y = int(round(float(y_of(np.array(k * step)))))
        cv.hline(y, x0, x1, GRID)
        lab = ms_label(k * step)
        cv.text(x0 - gap - text_width(lab, size), y - th // 2, lab, AXIS_TEXT, size)
        k += 1


def response_chart(times: Sequence, p50: Sequence, p95: Sequence, ok: Sequence, span: tuple[float, float],
                   size: int, scale: float = 1.0, limit: float | None = None) -> np.ndarray:
    """One service over the span, in a size x size square: p95 (orange) and p50 (blue)
    response times on a labelled millisecond axis, the alert threshold dashed, then a strip
    on the same time axis (red where checks failed, green where all succeeded), then the
    time span under it."""
    fs = font_size(scale)
    th = text_height(fs)
    u = max(1, round(scale))
    cv = Canvas(size, size)
    vmax = max([v for v in list(p95) + list(p50) if _finite(v)] or [1.0])
    if _finite(limit) and limit < vmax * 1.6:
        vmax = max(vmax, limit)  # show the threshold when the data come near it
    top, step = nice_top(vmax * 1.05)
    label_w = max(text_width(ms_label(top), fs), text_width(ms_label(step), fs)) + 6 * u
    strip_h = 8 * u
    x0, x1 = label_w, size - 4 * u
    y_top = th // 2 + 2 * u
    y_strip1 = size - th - 4 * u
    y_strip0 = y_strip1 - strip_h
    y_bottom = y_strip0 - 4 * u             # the plot's zero line
    w = x1 - x0
    cv.rect(x0, y_top, x1, y_bottom + 1, PLOT)

    def y_of(v):
        return y_bottom - np.clip(v / top, 0, 1.0) * (y_bottom - y_top)

    _y_grid(cv, y_of, top, step, x0, x1, 3 * u, fs)
    if _finite(limit) and limit <= top:
        cv.hline(int(round(float(y_of(np.array(limit))))), x0, x1, LIMIT, dash=4 * u)
    _line(cv, x0, y_of, columns(times, p50, span, w), P50, 2 * u)
    _line(cv, x0, y_of, columns(times, p95, span, w), P95, 2 * u)
    rates = columns(times, ok, span, w, reduce=min)
    cv.rect(x0, y_strip0, x1, y_strip1, NO_DATA)
    good = ~np.isnan(rates) & (np.nan_to_num(rates, nan=0) >= 0.999)
    bad = ~np.isnan(rates) & ~good
    strip = cv.a[y_strip0:y_strip1, x0:x1]
    strip[:, good] = OK
    strip[:, bad] = FAIL
    # A failure one pixel wide is easy to miss: mark it on the plot's axis too.
    for x in np.nonzero(bad)[0]:
        cv.rect(x0 + x - u, y_bottom - 3 * u, x0 + x + u + 1, y_bottom + 1, FAIL)
    left = span_label(span[1] - span[0])
    cv.text(x0, y_strip1 + 2 * u, left, AXIS_TEXT, fs)
    cv.text(x1 - text_width("now", fs), y_strip1 + 2 * u, "now", AXIS_TEXT, fs)
    legend = [("p95", P95), ("p50", P50)]
    x = x1 - sum(text_width(n, fs) + 6 * u for n, _ in legend)
    for name, colour in legend:
        x = cv.text(x, y_top + 2 * u, name, colour, fs) + 6 * u
    return cv.pixels()


def compare_chart(rows: Sequence[tuple[str, Sequence, Sequence, Sequence]], span: tuple[float, float],
                  size: int, scale: float = 1.0, limit: float | None = None) -> np.ndarray:
    """Every service over the same span, one strip each (name, p95 line on its own
    labelled scale, failures in red under it), sharing the time axis at the bottom: the
    Metrics History view, to compare services at a glance."""
    fs = font_size(scale)
    th = text_height(fs)
    u = max(1, round(scale))
    cv = Canvas(size, size)
    n = max(1, len(rows))
    axis_h = th + 4 * u
    band = (size - axis_h) // n
    tops = [nice_top(max([v for v in p95 if _finite(v)] or [1.0]) * 1.05)[0] for _, _, p95, _ in rows]
    label_w = max([text_width(ms_label(t), fs) for t in tops] + [text_width("0", fs)]) + 6 * u
    x0, x1 = label_w, size - 4 * u
    w = x1 - x0
    for i, (name, times, p95, ok) in enumerate(rows):
        b0 = i * band
        top_y, bottom_y = b0 + th + 4 * u, b0 + band - 6 * u
        cv.rect(x0, top_y, x1, bottom_y + 1, PLOT)
        cv.text(x0 + 4 * u, b0 + 2 * u, name, AXIS_TEXT, fs)
        top = tops[i]

        def y_of(v, top=top, top_y=top_y, bottom_y=bottom_y):
            return bottom_y - np.clip(v / top, 0, 1.0) * (bottom_y - top_y)

        cv.text(x0 - 3 * u - text_width(ms_label(top), fs), top_y - th // 2, ms_label(top), AXIS_TEXT, fs)
        cv.text(x0 - 3 * u - text_width("0", fs), bottom_y - th // 2, "0", AXIS_TEXT, fs)
        cv.hline(top_y, x0, x1, GRID)
        if _finite(limit) and limit <= top:
            cv.hline(int(round(float(y_of(np.array(limit))))), x0, x1, LIMIT, dash=4 * u)
        _line(cv, x0, y_of, columns(times, p95, span, w), P95, 2 * u)
        rates = columns(times, ok, span, w, reduce=min)
        bad = ~np.isnan(rates) & (np.nan_to_num(rates, nan=1) < 0.999)
        for x in np.nonzero(bad)[0]:
            cv.rect(x0 + x - u, bottom_y - 4 * u, x0 + x + u + 1, bottom_y + 1, FAIL)
    y = size - axis_h + 2 * u
    cv.text(x0, y, span_label(span[1] - span[0]), AXIS_TEXT, fs)
    cv.text(x1 - text_width("now", fs), y, "now", AXIS_TEXT, fs)
    return cv.pixels()


# -- state icons ------------------------------------------------------------------------------------
def _segment_distance(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


def state_icon(kind: str, colour, size: int = 32) -> np.ndarray:
    """A round badge in the state's colour with its symbol cut out in dark: check
    (connected), clock (connecting), cross (disconnected), exclamation mark (error), three
    dots (loading), crescent (sleeping), a falling line (degraded), question mark (unknown). The shape alone tells the state, for colour-blind eyes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    s = size / 32.0
    r = np.hypot(xx - size / 2, yy - size / 2)
    disc = np.clip(14.5 * s - r + 0.5, 0, 1)
    ink = np.zeros_like(disc)
    lw = 2.2 * s

    def seg(ax, ay, bx, by, width=lw):
        d = _segment_distance(xx, yy, ax * s, ay * s, bx * s, by * s)
        np.maximum(ink, np.clip(width - d + 0.5, 0, 1), out=ink)

    if kind == "connected":
        seg(9, 16.5, 14, 21.5)
        seg(14, 21.5, 23, 11)
    elif kind == "connecting":
        ring = np.clip(1.6 * s - np.abs(r - 9.5 * s) + 0.5, 0, 1)
        np.maximum(ink, ring, out=ink)
        seg(16, 16, 16, 10, 1.8 * s)
        seg(16, 16, 20, 18, 1.8 * s)
    elif kind == "disconnected":
        seg(11, 11, 21, 21)
        seg(21, 11, 11, 21)
    elif kind == "error":
        seg(16, 8.5, 16, 18)
        seg(16, 23, 16, 23.2, 2.4 * s)
    elif kind == "loading":  # three dots: on its way
        for x in (10, 16, 22):
            seg(x, 16, x, 16.2, 2.6 * s)
    elif kind == "sleeping":  # a crescent moon
        moon = np.clip(7.5 * s - np.hypot(xx - 15 * s, yy - 16 * s) + 0.5, 0, 1)
        bite = np.clip(6.5 * s - np.hypot(xx - 19 * s, yy - 13 * s) + 0.5, 0, 1)
        np.maximum(ink, np.clip(moon - bite, 0, 1), out=ink)
    elif kind == "degraded":  # a line that falls: answers, but worse
        seg(8, 11, 13, 16)
        seg(13, 16, 17, 13)
        seg(17, 13, 23, 21)
    else:  # unknown, offline, missing
        ring = np.clip(1.8 * s - np.abs(np.hypot(xx - 16 * s, yy - 12.5 * s) - 4.5 * s) + 0.5, 0, 1)
        ring[(yy > 12.5 * s) & (xx < 16 * s)] = 0
        np.maximum(ink, ring, out=ink)
        seg(16, 17, 16, 18.5, 1.8 * s)
        seg(16, 23, 16, 23.2, 2.2 * s)
    a = np.zeros((size, size, 4), dtype=np.float32)
    a[..., :3] = np.asarray(colour[:3], dtype=np.float32) * (1 - ink[..., None]) + 0.08 * ink[..., None]
    a[..., 3] = disc
    return np.ascontiguousarray(a[::-1]).ravel()


# -- the Metrics History window ------------------------------------------------------------------------
# One colour per service, told apart also by colour-blind eyes (after Okabe and Ito), softened
# for a dark background. None of them is the failure red: red means "failed" only.
SERIES = ((0.45, 0.72, 0.95, 1.0),   # sky blue
          (0.93, 0.66, 0.25, 1.0),   # orange
          (0.80, 0.55, 0.72, 1.0),   # reddish purple
          (0.30, 0.70, 0.58, 1.0),   # bluish green
          (0.92, 0.86, 0.45, 1.0),   # yellow
          (0.55, 0.60, 0.95, 1.0),   # blue
          (0.75, 0.75, 0.75, 1.0))   # grey
TITLE = (0.90, 0.90, 0.90, 1.0)
TICKS = {300: 60, 3600: 600, 86400: 3 * 3600}  # seconds between the time axis' clock labels


def series_colour(i: int):
    return SERIES[i % len(SERIES)]


def _mix(c, other, k: float):
    return tuple(a * (1 - k) + b * k for a, b in zip(c[:3], other[:3])) + (1.0,)


def _span_words(seconds: float) -> str:
    return f"last {seconds / 3600:g} h" if seconds >= 3600 else f"last {seconds / 60:g} min"


def history_chart(rows: Sequence[tuple[str, Sequence, Sequence, Sequence, Sequence]], span: tuple[float, float],
                  width: int, height: int, scale: float = 1.0, limit: float | None = None,
                  clock=None, message: str = "") -> np.ndarray:
    """Every service over the span on one shared time axis and one millisecond scale, for
    the Metrics History window: each service's p95 (thick) and p50 (thin) line in its own
    colour, a legend naming each colour (with its latest p95), the slow threshold dashed,
    under the plot one lane per service that is red where its checks failed, then clock
    times and the span. rows: (name, times, p50, p95, success rate). With no service
    having two points in the span, it says so in words instead; so does `message` (its
    first line large, the others under it).
    `clock(t)` writes a wall time as a label (HH:MM by default)."""
    import time as _time

    clock = clock or (lambda t: _time.strftime("%H:%M", _time.localtime(t)))
    fs = font_size(scale)
    th = text_height(fs)
    big = 22
    bh = text_height(big)
    u = max(1, round(scale))
    pad = 14 * u
    cv = Canvas(width, height)
    seconds = span[1] - span[0]
    cv.text(pad, pad, f"Response time of every service, {_span_words(seconds)}", TITLE, big)
    counted = [(name, enough(t, p95, span)) for name, t, _p50, p95, _ok in rows]
    drawn = [r for r, (_, n) in zip(rows, counted) if n >= 2]
    if message or not drawn:
        lines = message.split("\n") if message else [
            "Not enough data yet",
            f"A service is drawn once it has 2 checks in the {_span_words(seconds)}.",
            "The chart appears here by itself."]
        y = height // 2 - (bh + 2 * th) // 2
        for k, line in enumerate(lines):
            size = big if k == 0 else fs
            cv.text((width - text_width(line, size)) // 2, y, line, TITLE if k == 0 else AXIS_TEXT, size)
            y += text_height(size) + 6 * u
        return cv.pixels()

    # Legend: a swatch and the name in words for each service (its latest p95 after it),
    # wrapped onto more lines when the window is narrow; then what the line styles mean.
    y = pad + bh + 8 * u
    x = pad
    colours = {name: series_colour(i) for i, (name, *_rest) in enumerate(rows)}
    for (name, t, _p50, p95, ok), (_, n) in zip(rows, counted):
        last = next((v for v in reversed(list(p95)) if _finite(v)), None)
        checked = enough(t, ok, span) > 0
        words = (f"{name}  {ms_label(last)}" if n >= 2 and last is not None
                 else f"{name}  (collecting data)" if n else f"{name}  (no answers)" if checked
                 else f"{name}  (no data)")
        item_w = 16 * u + text_width(words, fs) + 18 * u
        if x + item_w > width - pad and x > pad:
            x, y = pad, y + th + 4 * u
        cv.rect(x, y + th // 2 - 3 * u, x + 12 * u, y + th // 2 + 3 * u, colours[name])
        x = cv.text(x + 16 * u, y, words, TITLE, fs) + 18 * u
    y += th + 4 * u
    vmax = max([v for _n, _t, p50, p95, _ok in drawn for v in list(p95) + list(p50) if _finite(v)] or [1.0])
    if _finite(limit) and limit < vmax * 1.6:
        vmax = max(vmax, limit)  # show the threshold when the data come near it
    top, step = nice_top(vmax * 1.05)
    show_limit = _finite(limit) and limit <= top
    key = "Thick line: p95, thin line: p50 response time" + (", dashed: slow threshold" if show_limit else "")
    cv.text(pad, y, key, AXIS_TEXT, fs)
    y_top = y + th + 10 * u

    lane_h, lane_gap = th - 2 * u, 4 * u  # a lane is as tall as its name
    lanes_h = len(rows) * (lane_h + lane_gap)
    y_axis = height - pad - th               # clock labels' top
    y_lanes = y_axis - 6 * u - lanes_h       # first failure lane's top
    y_bottom = y_lanes - th - 10 * u         # the plot's zero line ("Failed checks" above the lanes)
    if y_bottom - y_top < 40 * u:            # a tiny window: the plot keeps a readable height
        y_bottom = y_top + 40 * u

    label_w = max([text_width(ms_label(k * step), fs) for k in range(int(round(top / step)) + 1)]
                  + [text_width(name, fs) for name, *_rest in rows])
    x0, x1 = pad + label_w + 8 * u, width - pad
    w = max(1, x1 - x0)
    cv.rect(x0, y_top, x1, y_bottom + 1, PLOT)

    def y_of(v):
        return y_bottom - np.clip(v / top, 0, 1.0) * (y_bottom - y_top)

    # Clock times on the shared axis, with faint vertical grid lines through the plot.
    every = TICKS.get(int(seconds), max(1, int(seconds // 5)))
    tick = math.ceil(span[0] / every) * every
    last_right = x0 + text_width(span_label(seconds), fs)  # never over "5 min ago"
    while tick <= span[1]:
        x = x0 + int((tick - span[0]) / seconds * w)
        cv.rect(x, y_top, x + 1, y_bottom, GRID)
        lab = clock(tick)
        lx = x - text_width(lab, fs) // 2
        if lx > last_right + 8 * u and lx + text_width(lab, fs) < x1 - text_width("now", fs) - 8 * u:
            cv.text(lx, y_axis, lab, AXIS_TEXT, fs)
            last_right = lx + text_width(lab, fs)
        tick += every
    _y_grid(cv, y_of, top, step, x0, x1, 6 * u, fs)
    if show_limit:
        yy = int(round(float(y_of(np.array(limit)))))
        cv.hline(yy, x0, x1, LIMIT, dash=5 * u)
        lab = f"slow {ms_label(limit)}"
        cv.text(x1 - 4 * u - text_width(lab, fs), yy - th - 1 * u, lab, LIMIT, fs)
    for name, t, p50, _p95, _ok in drawn:
        _line(cv, x0, y_of, columns(t, p50, span, w), _mix(colours[name], PLOT, 0.35), u)
    for name, t, _p50, p95, _ok in drawn:
        _line(cv, x0, y_of, columns(t, p95, span, w), colours[name], 2 * u)

    # Failed checks, one lane per service on the same time axis: red where a check failed,
    # the service's colour dimmed where all succeeded, dark where there is no data.
    cv.text(x0, y_lanes - th - 3 * u, "Failed checks (red) on the same time axis", AXIS_TEXT, fs)
    for i, (name, t, _p50, _p95, ok) in enumerate(rows):
        ly = y_lanes + i * (lane_h + lane_gap)
        cv.text(x0 - 6 * u - text_width(name, fs), ly + lane_h // 2 - th // 2, name, AXIS_TEXT, fs)
        cv.rect(x0, ly, x1, ly + lane_h, NO_DATA)
        rates = _held(columns(t, ok, span, w, reduce=min))
        good = ~np.isnan(rates) & (np.nan_to_num(rates, nan=0) >= 0.999)
        bad = ~np.isnan(rates) & ~good
        lane = cv.a[ly:ly + lane_h, x0:x1]
        lane[:, good] = _mix(colours[name], PLOT, 0.7)
        wide = bad.copy()  # a failure at least 2u + 1 px wide: one failed check is easy to miss
        for k in range(1, u + 1):
            wide[k:] |= bad[:-k]
            wide[:-k] |= bad[k:]
        lane[:, wide] = FAIL
    cv.text(x0, y_axis, span_label(seconds), AXIS_TEXT, fs)
    cv.text(x1 - text_width("now", fs), y_axis, "now", AXIS_TEXT, fs)
    return cv.pixels()
