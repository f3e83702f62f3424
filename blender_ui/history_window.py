"""The Metrics History window: every service on one large, seamless chart, in a window of
its own where the add-on owns every pixel (the sidebar cannot show a picture wider than a
square, see docs/blender.md).

The window is a temporary one, as Blender's Preferences and View Render use: opened with
`screen.userpref_show`, its single area turned into an Image Editor that shows no image.
A temporary window's screen is freed when it closes, and nothing marks the file modified
or adds an undo step. Blender writes every open window into a saved file, temporary ones
too, so the window is closed just before a save and opened again by the next timer tick
after it: no window, screen, workspace or image of the add-on's is in the artist's file.

The chart is rendered with numpy (`charts.history_chart`) by the timer, only while the
window is open and only when its data, range, time axis (every few pixels) or pixel size
changed, into a GPU texture. The draw handler only puts that texture on screen, one
texture pixel per screen pixel.
"""
from __future__ import annotations

import time

import bpy
from bpy.app.handlers import persistent

from . import pictures, view
from .state import RT, STATE

MOVE_PX = 8           # the time axis moves the picture every this many pixels...
MOVE_MIN_S = 5.0      # ...but at most once per this many seconds (one render costs tens of ms)
RENDER_GAP_S = 1.0    # new data re-render at most this often (a resize or new range at once)
AREA = "IMAGE_EDITOR"  # shows nothing of its own without an image


class _Shown:
    """What is on screen: the window (by pointer, 0 when none), its texture and signature."""

    def __init__(self) -> None:
        self.window = 0
        self.handler = None
        self.texture = None
        self.quad = None       # the unit square the texture is drawn on (made once, on first draw)
        self.size = (0, 0)
        self.signature = None
        self.render_ms = 0.0   # the last render, for the bench and the docs
        self.rendered_at = 0.0  # monotonic time of the last render
        self.reopen = False    # closed for a save: the timer opens it again


SHOWN = _Shown()


def is_open() -> bool:
    return bool(SHOWN.window)


def _find(wm):
    """(window, region) of the open history window, or None if the artist closed it (or
    another tool, such as View Render, took it over by showing an image in it)."""
    for window in wm.windows:
        if window.as_pointer() != SHOWN.window:
            continue
        areas = window.screen.areas
        if len(areas) != 1 or areas[0].type != AREA or areas[0].spaces.active.image is not None:
            return None
        region = next((r for r in areas[0].regions if r.type == "WINDOW"), None)
        return (window, region) if region is not None and region.width > 1 else None
    return None


def open_window(context) -> str:
    """Open the window (or keep the one open) and render it now. Returns a problem in words,
    or "" when it is open."""
    wm = context.window_manager
    if pictures.charts is None:
        return pictures.MISSING
    if SHOWN.window and _find(wm) is not None:
        SHOWN.signature = None
        update(wm)
        return ""
    before = {w.as_pointer() for w in wm.windows}
    bpy.ops.screen.userpref_show("INVOKE_DEFAULT")
    new = [w for w in wm.windows if w.as_pointer() not in before]
    if not new:  # Blender reuses an open Preferences window rather than opening a second one
        return "Close the Preferences window first: Blender opens one such window at a time"
    window = new[0]
    area = window.screen.areas[0]
    area.type = AREA
    space = area.spaces.active
    for attr in ("show_region_header", "show_region_toolbar", "show_region_ui", "show_region_tool_header",
                 "show_gizmo"):
        if hasattr(space, attr):
            setattr(space, attr, False)
    SHOWN.window = window.as_pointer()
    SHOWN.signature = None
    if SHOWN.handler is None:
        SHOWN.handler = bpy.types.SpaceImageEditor.draw_handler_add(_draw, (), "WINDOW", "POST_PIXEL")
    update(wm)
    return ""


def close(wm=None) -> None:
    """Forget the window's picture and handler; with `wm`, also close the window (the add-on
    is being disabled: an empty Image Editor window would be left otherwise)."""
    if SHOWN.handler is not None:
        bpy.types.SpaceImageEditor.draw_handler_remove(SHOWN.handler, "WINDOW")
        SHOWN.handler = None
    found = _find(wm) if wm is not None and SHOWN.window else None
    SHOWN.window = 0
    SHOWN.texture = None
    SHOWN.quad = None
    SHOWN.signature = None
    SHOWN.size = (0, 0)
    if found is not None:
        with bpy.context.temp_override(window=found[0]):
            bpy.ops.wm.window_close()


def reopen(wm) -> None:
    """From the timer, after a save closed the window (the timer's context may have no
    window then, if the save was made from the closed one: use the main window)."""
    SHOWN.reopen = False
    if not wm.windows:
        return
    main = wm.windows[0]
    with bpy.context.temp_override(window=main, screen=main.screen):
        open_window(bpy.context)


@persistent
def _before_save(*_args) -> None:
    wm = bpy.context.window_manager
    if SHOWN.window and wm is not None and _find(wm) is not None:
        close(wm)
        SHOWN.reopen = True


def add_handlers() -> None:
    if _before_save not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_before_save)


def remove_handlers() -> None:
    if _before_save in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(_before_save)
    SHOWN.reopen = False


def _rows(state, client, rng: str) -> list:
    names = [item.name for item in state.services if item.name in client.services]
    out = []
    for name in names:
        s = pictures.service_series(name, rng)
        out.append((view.label_of(name), s.get("t") or [], s.get("p50_ms") or [], s.get("p95_ms") or [],
                    s.get("success_rate") or []))
    return out


def resized(wm) -> bool:
    """Cheap enough for every tick: has the window's size changed since its last render?"""
    found = _find(wm) if SHOWN.window else None
    return found is not None and (found[1].width, found[1].height) != SHOWN.size


def update(wm) -> bool:
    """From the timer: re-render if anything the picture shows changed. True if it did."""
    if not SHOWN.window:
        return False
    found = _find(wm)
    if found is None:  # closed by the artist: nothing more to render or draw
        close()
        return False
    _window, region = found
    state = getattr(wm, STATE, None)
    client = RT.client
    if state is None or pictures.charts is None:
        return False
    charts = pictures.charts
    size = (region.width, region.height)
    rng = state.metrics_range
    seconds = view.RANGE_SECONDS[rng]
    now = time.time()
    limit = RT.thresholds["p95_ms"]
    online = client is not None and client.online
    rows = _rows(state, client, rng) if online else []
    step = max(MOVE_MIN_S, seconds / max(1, size[0] / MOVE_PX))
    signature = (size, rng, int(now / step), limit, online, pictures.ui_scale(),
                 tuple((r[0], len(r[1]), r[1][-1] if r[1] else None, r[3][-1] if r[3] else None) for r in rows))
    if signature == SHOWN.signature:
        return False
    last = SHOWN.signature
    if last is not None and last[:2] == signature[:2] and time.monotonic() - SHOWN.rendered_at < RENDER_GAP_S:
        return False  # live updates without the aggregator's history come several a second
    started = time.perf_counter()
    message = "" if online else "Monitor offline\nThe chart comes back when the monitor answers again."
    pixels = charts.history_chart(rows, (now - seconds, now), size[0], size[1], pictures.ui_scale(), limit,
                                  message=message)
    SHOWN.texture = _texture(pixels, size)
    SHOWN.size = size
    SHOWN.signature = signature
    SHOWN.render_ms = (time.perf_counter() - started) * 1000.0
    SHOWN.rendered_at = time.monotonic()
    region.tag_redraw()
    return True


def _texture(pixels, size):
    import gpu  # only with a window: Blender in background mode has no GPU

    buf = gpu.types.Buffer("FLOAT", len(pixels), pixels)  # numpy's buffer, copied once
    # The chart's colours are sRGB, as the sidebar's previews take them. An sRGB texture is
    # drawn as is; a plain RGBA8 one would be brightened as if it were linear (Blender 3.4).
    try:
        return gpu.types.GPUTexture(size, format="SRGB8_A8", data=buf)
    except (TypeError, ValueError):  # a Blender without that format name
        return gpu.types.GPUTexture(size, format="RGBA8", data=buf)


def _draw() -> None:
    """Draw handler of the Image Editor: only puts the rendered texture on screen, in our
    window and nowhere else, top-left aligned (until a resize is re-rendered)."""
    ctx = bpy.context
    if SHOWN.texture is None or ctx.window is None or ctx.window.as_pointer() != SHOWN.window:
        return
    if ctx.space_data is None or ctx.space_data.image is not None:
        return
    import gpu

    if SHOWN.quad is None:
        SHOWN.quad = _quad()
    w, h = SHOWN.size
    shader = gpu.shader.from_builtin("IMAGE")
    with gpu.matrix.push_pop():
        gpu.matrix.translate((0, ctx.region.height - h))
        gpu.matrix.scale((w, h))
        shader.bind()
        shader.uniform_sampler("image", SHOWN.texture)
        SHOWN.quad.draw(shader)


def _quad():
    """A unit square with texture coordinates, for the builtin IMAGE shader (what
    gpu_extras' draw_texture_2d draws, built from the gpu module alone)."""
    import gpu

    fmt = gpu.types.GPUVertFormat()
    fmt.attr_add(id="pos", comp_type="F32", len=2, fetch_mode="FLOAT")
    fmt.attr_add(id="texCoord", comp_type="F32", len=2, fetch_mode="FLOAT")
    corners = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
    vbo = gpu.types.GPUVertBuf(fmt, len(corners))
    vbo.attr_fill("pos", corners)
    vbo.attr_fill("texCoord", corners)
    return gpu.types.GPUBatch(type="TRI_STRIP", buf=vbo)
