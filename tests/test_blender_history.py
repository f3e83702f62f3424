"""The Metrics History window (issue 12): its chart's content, pixel by pixel (pure numpy,
as the timer renders it), and its operator in real bpy 5.0.1. The window itself is opened,
resized, screenshotted and closed in a real Blender GUI by tests/test_blender_gui.py."""
from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The add-on's bpy-free modules as a bare package (its __init__ needs bpy), as in test_blender_view.
_PKG = types.ModuleType("md_addon_pure")
_PKG.__path__ = [str(ROOT / "blender_ui")]
sys.modules.setdefault("md_addon_pure", _PKG)
charts = importlib.import_module("md_addon_pure.charts")

NOW = 1_800_000_000.0
SPAN = (NOW - 300.0, NOW)
W, H = 960, 600


def _service(base, fails=(), n=61):
    t = [NOW - 300 + k * 5 for k in range(n)]
    p95 = [base + 0.3 * base * math.sin(k / 4) for k in range(n)]
    return t, [v * 0.6 for v in p95], p95, [0.5 if k in fails else 1.0 for k in range(n)]


def _image(pixels, w=W, h=H):
    """Top-down 8-bit RGB, as on screen (the chart's rows come bottom-up, for Blender)."""
    return np.round(pixels.reshape(h, w, 4)[::-1, :, :3] * 255).astype(np.int16)


def _count(img, colour, box=None, tol=3):
    if box:
        left, top, right, bottom = box
        img = img[top:bottom, left:right]
    target = np.round(np.asarray(colour[:3]) * 255)
    return int((np.abs(img - target).max(axis=-1) <= tol).sum())


def _rows():
    return [("ComfyUI", *_service(40)), ("RVC", *_service(90, fails=(30, 31))), ("AudioLDM", *_service(150))]


def test_every_service_is_a_line_of_its_own_colour_on_one_chart():
    img = _image(charts.history_chart(_rows(), SPAN, W, H, 1.0, limit=500.0))
    plot = (80, 110, W - 20, H - 120)  # under the legend, above the failure lanes
    for i in range(3):
        colour = charts.series_colour(i)
        # A p95 line 2 px thick across (nearly) the whole width of the plot.
        assert _count(img, colour, plot) >= W // 2, (i, _count(img, colour, plot))
        assert _count(img, colour, (0, 0, W, 100)) >= 40, "no legend swatch for service %d" % i
    # The three colours are different, and none is the failure red.
    colours = {charts.series_colour(i) for i in range(len(charts.SERIES))}
    assert len(colours) == len(charts.SERIES) and charts.FAIL not in colours
    # RVC's two failed checks are red in its lane (the second of three), nowhere else.
    red = np.abs(img - np.round(np.asarray(charts.FAIL[:3]) * 255)).max(axis=-1) <= 3
    ys, xs = np.nonzero(red)
    assert len(ys) >= 20 and ys.min() > H - 120, (len(ys), ys.min() if len(ys) else None)
    assert xs.min() > W * 0.4 and xs.max() < W * 0.6  # at half the span, where they happened
    lanes = sorted({int(y) for y in ys})
    assert lanes[-1] - lanes[0] < 16  # one lane only


def test_axis_values_and_time_span_are_written_on_it():
    img = _image(charts.history_chart(_rows(), SPAN, W, H, 1.0, limit=500.0,
                                      clock=lambda t: "12:34"))
    text = np.abs(img - np.round(np.asarray(charts.AXIS_TEXT[:3]) * 255)).max(axis=-1) <= 60
    # The y-axis labels: text left of the plot, at several heights.
    rows_with_labels = {int(y) // 20 for y in np.nonzero(text[80:H - 100, :70])[0]}
    assert len(rows_with_labels) >= 4, rows_with_labels
    # The time axis under the lanes: "5 min ago", clock times, "now".
    bottom = text[H - 30:, :]
    assert bottom[:, :150].sum() > 30 and bottom[:, W - 60:].sum() > 10 and bottom[:, W // 3:2 * W // 3].sum() > 30


@pytest.mark.parametrize("rows, message", [
    ([], ""),
    ([("ComfyUI", [NOW - 10], [5.0], [9.0], [1.0]), ("RVC", [], [], [], [])], ""),  # one point is not a line
    (_rows(), "Monitor offline\nThe chart comes back when the monitor answers again."),
])
def test_not_enough_data_says_so_in_words_instead_of_an_empty_box(rows, message):
    img = _image(charts.history_chart(rows, SPAN, W, H, 1.0, limit=500.0, message=message))
    for i in range(len(charts.SERIES) - 1):  # (the last is a grey, as the text's anti-aliasing)
        assert _count(img, charts.series_colour(i)) == 0  # no line, no legend: nothing pretends
    assert _count(img, charts.PLOT) == 0  # and no empty plot box
    # Large words in the middle (the first line, in the title's colour).
    title = np.abs(img - np.round(np.asarray(charts.TITLE[:3]) * 255)).max(axis=-1) <= 40
    middle = title[H // 2 - 40:H // 2 + 10, W // 4:3 * W // 4]
    assert middle.sum() > 150, middle.sum()


@pytest.mark.parametrize("w, h, scale", [(420, 300, 1.0), (1280, 800, 1.0), (1400, 1000, 2.0)])
def test_any_window_size_renders_inside_its_picture(w, h, scale):
    rows = [(f"Service {k}", *_service(20 + 10 * k)) for k in range(7)]
    px = charts.history_chart(rows, SPAN, w, h, scale, limit=50.0)
    assert px.dtype == np.float32 and px.shape == (w * h * 4,)
    assert np.isfinite(px).all() and px.min() >= 0 and px.max() <= 1


# -- the operator in real bpy ---------------------------------------------------------------------------
bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402 - ships with bpy


def test_the_window_operator_has_a_clear_name_and_leaves_nothing_behind():
    mod = addon_utils.enable("blender_ui", default_set=True, handle_error=None)
    assert mod is not None
    try:
        from blender_ui import history_window

        op = bpy.ops.movie_director.open_history_window
        assert op.get_rna_type().name == "Open Metrics History Window"
        assert not op.poll()  # no window in background mode: nothing to open, and it says so
        assert history_window.update(bpy.context.window_manager) is False
    finally:
        addon_utils.disable("blender_ui", default_set=True, handle_error=None)
    assert not hasattr(bpy.types, "MOVIE_DIRECTOR_OT_open_history_window")
    assert history_window.SHOWN.handler is None and history_window.SHOWN.texture is None
