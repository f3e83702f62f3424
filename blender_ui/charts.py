"""Small trend pictures, drawn pixel by pixel in pure Python (no matplotlib in Blender).

`line_chart()` returns a flat RGBA float list, rows bottom-up, which is exactly what
`ImagePreview.image_pixels_float` takes; the panels show it with `template_icon`.
A 160x48 chart costs about a millisecond, and is redrawn only when its data changed.
"""
from __future__ import annotations

import math
from typing import Sequence

BG = (0.11, 0.11, 0.11, 1.0)
GRID = (0.22, 0.22, 0.22, 1.0)
P95 = (0.95, 0.55, 0.15, 1.0)     # orange
P50 = (0.35, 0.65, 1.0, 1.0)      # blue
OK = (0.30, 0.80, 0.35, 1.0)      # green
FAIL = (0.90, 0.25, 0.25, 1.0)    # red
LIMIT = (0.85, 0.85, 0.85, 1.0)   # threshold line
NO_DATA = (0.16, 0.16, 0.16, 1.0)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Canvas:
    def __init__(self, w: int, h: int, bg=BG) -> None:
        self.w, self.h = w, h
        self.px = list(bg) * (w * h)

    def set(self, x: int, y: int, c) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 4
            self.px[i:i + 4] = c

    def vline(self, x: int, y0: int, y1: int, c) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            self.set(x, y, c)

    def hline(self, y: int, c, dash: int = 0) -> None:
        for x in range(self.w):
            if not dash or (x // dash) % 2 == 0:
                self.set(x, y, c)

    def pixel(self, x: int, y: int) -> tuple[float, ...]:
        i = (y * self.w + x) * 4
        return tuple(self.px[i:i + 4])


def _columns(values: Sequence, w: int, times: Sequence | None = None,
             span: tuple[float, float] | None = None) -> list:
    """Resample to one value per pixel column (max of the bucket, so spikes stay visible).
    With `times` and `span` (t0, t1) a column is a slice of time: gaps stay empty and the
    newest point is at the right edge, however few points there are."""
    if times is not None and span is not None:
        t0, t1 = span
        buckets: list[list[float]] = [[] for _ in range(w)]
        for t, v in zip(times, values):
            if _finite(t) and _finite(v) and t0 <= t <= t1 and t1 > t0:
                buckets[min(w - 1, int((t - t0) / (t1 - t0) * w))].append(v)
        return [max(b) if b else None for b in buckets]
    n = len(values)
    if n == 0:
        return [None] * w
    out = []
    for x in range(w):
        lo, hi = x * n // w, max(x * n // w + 1, (x + 1) * n // w)
        bucket = [v for v in values[lo:hi] if _finite(v)]
        out.append(max(bucket) if bucket else None)
    return out


def line_chart(series: Sequence[tuple[Sequence, tuple]], w: int = 160, h: int = 48,
               vmax: float | None = None, limit: float | None = None,
               rates: Sequence | None = None, times: Sequence | None = None,
               span: tuple[float, float] | None = None) -> list[float]:
    """Lines for each (values, colour), scaled to the data; a dashed `limit` line when it is
    in range; with `rates`, a success strip along the bottom (green ok, red failed)."""
    cv = Canvas(w, h)
    top = vmax
    if top is None:
        finite = [v for values, _ in series for v in values if _finite(v)]
        top = max(finite) * 1.25 if finite else 1.0
    top = top if top > 0 else 1.0
    if rates is not None:
        for x, v in enumerate(_columns(rates, w, times, span)):
            if v is not None:
                cv.vline(x, 0, 1, OK if v >= 0.999 else FAIL)
    for y in (h // 4, h // 2, 3 * h // 4):
        cv.hline(y, GRID)
    scale = (h - 3) / top
    for values, colour in series:
        cols = _columns(values, w, times, span)
        prev = None
        for x, v in enumerate(cols):
            if v is None:
                prev = None
                continue
            y = 1 + min(h - 2, int(v * scale))
            cv.vline(x, y, prev if prev is not None else y, colour)
            prev = y
    if _finite(limit) and limit * scale < h - 1:
        cv.hline(1 + int(limit * scale), LIMIT, dash=4)
    return cv.px


def rate_chart(rates: Sequence, w: int = 160, h: int = 24, times: Sequence | None = None,
               span: tuple[float, float] | None = None) -> list[float]:
    """Success rate as columns: the green part is the share that succeeded, red the rest."""
    cv = Canvas(w, h)
    for x, v in enumerate(_columns(rates, w, times, span)):
        if v is None:
            continue
        ok_h = int(round(max(0.0, min(1.0, v)) * h))
        if ok_h:
            cv.vline(x, 0, ok_h - 1, OK)
        if ok_h < h:
            cv.vline(x, ok_h, h - 1, FAIL)
    return cv.px


def bar(frac: float, colour, w: int = 160, h: int = 8) -> list[float]:
    cv = Canvas(w, h, NO_DATA)
    filled = int(round(max(0.0, min(1.0, frac)) * w))
    for x in range(filled):
        cv.vline(x, 0, h - 1, colour)
    return cv.px


def compare_chart(values: Sequence[tuple[float | None, tuple]], w: int = 160, h: int = 40,
                  limit: float | None = None) -> list[float]:
    """One vertical bar per service, side by side, for the compare view."""
    cv = Canvas(w, h)
    finite = [v for v, _ in values if _finite(v)]
    top = max(finite + ([limit * 1.1] if _finite(limit) else [])) if finite else 1.0
    n = max(1, len(values))
    slot = w // n
    for i, (v, colour) in enumerate(values):
        if not _finite(v):
            continue
        bh = max(1, int(v / top * (h - 2))) if top > 0 else 1
        for x in range(i * slot + 2, (i + 1) * slot - 2):
            cv.vline(x, 0, bh, colour)
    if _finite(limit) and top > 0:
        cv.hline(int(limit / top * (h - 2)), LIMIT, dash=4)
    return cv.px


def tiles(px: list[float], w: int, h: int) -> list[list[float]]:
    """Cut a w x h picture into square h x h tiles, left to right. Blender shows a preview
    icon in a square box, so a wide chart is shown as a row of square tiles."""
    out = []
    for k in range(w // h):
        tile = []
        for y in range(h):
            start = (y * w + k * h) * 4
            tile += px[start:start + h * 4]
        out.append(tile)
    return out
