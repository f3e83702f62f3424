"""Runs inside a real Blender GUI (Debian's 3.4 under Xvfb): what the add-on's panels cost
Blender's redraw.

Started by bench/fig_blender.py (`measure_draw`) as Blender's start-up script, with
MD_HEALTH_DRAW_TIMING set, so the add-on times each draw() of its panels (blender_ui/
instrument.py) and sums the draws of one full redraw of a region. It starts the local
monitor with the add-on's own operator against fake backends (four backends and the
language models: five services; the bench runs the fakes as processes of their own, so
Blender's process holds only the add-on, as an artist's does), opens the 3D Viewport's
sidebar on the Movie Director tab and its Health Monitoring panel by clicking them
(xdotool), waits until every service has a chart, and then records the natural redraws
(the timer tags one whenever the status changes) until it has enough. Beside each full
draw of the panels it records Blender's own time for that redraw of the sidebar: from the
first panel's draw() to the region's POST_PIXEL callback (layout, the add-on's draw() and
the GPU drawing of the region).

    blender --factory-startup start.blend --python bench/blender_draw.py
    env: MD_BENCH_ROOT, MD_BENCH_OUT (JSON), MD_BENCH_REDRAWS, MD_BENCH_TIMEOUT
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.environ["MD_BENCH_ROOT"])
import addon_utils  # noqa: E402
import bpy  # noqa: E402

OUT = os.environ["MD_BENCH_OUT"]
WANT = int(os.environ.get("MD_BENCH_REDRAWS", "300"))
DEADLINE = time.monotonic() + float(os.environ.get("MD_BENCH_TIMEOUT", "240"))
START = time.monotonic()
result = {"errors": [], "draw_ms": [], "frame_ms": [], "draw_cpu_ms": [], "blender": bpy.app.version_string, "phases": {}}
S = {"draws": 0}


def save():
    with open(OUT, "w") as f:
        json.dump(result, f)


def quit_now():
    bpy.ops.wm.quit_blender()


try:
    addon_utils.enable("blender_ui", default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons["blender_ui"].preferences
    prefs.events, prefs.snapshots, prefs.requests = (os.environ["MD_HEALTH_EVENTS"], os.environ["MD_HEALTH_SNAPSHOTS"],
                                                     os.environ["MD_HEALTH_REQUESTS"])
    prefs.monitor_python = os.environ["MD_BENCH_PYTHON"]
    from blender_ui import instrument, pictures
    state = bpy.context.window_manager.movie_director_health
except Exception:  # noqa: BLE001
    import traceback
    result["errors"].append(traceback.format_exc())
    save()
    bpy.app.timers.register(quit_now, first_interval=0.1)
    raise


def area():
    return S["area"]


def sidebar():
    return [r for r in area().regions if r.type == "UI"][0]


def rect():
    """The sidebar on screen: left, top, right, bottom in pixels from the top-left."""
    h = bpy.context.window_manager.windows[0].height
    r = sidebar()
    return r.x, h - r.y - r.height, r.x + r.width, h - r.y


def xdo(*args):
    subprocess.run(["xdotool", *map(str, args)], timeout=20)


def post_pixel():
    """The sidebar finished drawing: the add-on's draw() time in this redraw, and Blender's
    time for the whole redraw of the region since its first panel began."""
    S["draws"] += 1
    got = instrument.close(sidebar().as_pointer())
    if got is not None and S.get("phase") == "measure":
        result["draw_ms"].append(got[0] * 1000)
        result["frame_ms"].append(got[1] * 1000)
        result["draw_cpu_ms"].append(got[2] * 1000)


def panels_here():
    return instrument.last_panels.get(sidebar().as_pointer(), set())


def clicked_and_drawn() -> bool:
    """Blender handled the last click: two redraws of the sidebar since it (the first may
    come before Blender reads the click), or 8 s at most; until then each poll asks for a
    redraw. Clicking again sooner can undo the last click on a loaded machine."""
    if S["draws"] >= S.get("drawn", 0) + 2 or time.monotonic() > S.get("give_up", 0):
        return True
    sidebar().tag_redraw()
    return False


def click(x, y):
    xdo("mousemove", x, y, "click", 1)
    S["drawn"], S["give_up"] = S["draws"], time.monotonic() + 8.0


def step():
    try:
        result["phases"].setdefault(S.get("phase", "start"), round(time.monotonic() - START, 2))
        if time.monotonic() > DEADLINE:
            result["errors"].append(f"timed out in phase {S.get('phase')}: {len(result['draw_ms'])} redraws, "
                                    f"services { {s.name: s.state for s in state.services} }; local monitor "
                                    f"{state.monitor_state!r} ({state.monitor_note!r}); message {state.message!r}")
            return finish()
        phase = S.setdefault("phase", "start")
        if phase == "start":
            S["area"] = next(a for a in bpy.context.window_manager.windows[0].screen.areas if a.type == "VIEW_3D")
            area().spaces.active.show_region_ui = True
            bpy.ops.movie_director.start_monitor()
            S["handler"] = bpy.types.SpaceView3D.draw_handler_add(post_pixel, (), "UI", "POST_PIXEL")
            S["phase"], S["k"] = "tab", 0
        elif phase == "tab":  # click down the tab strip until the add-on's panels draw here
            if not clicked_and_drawn():
                return 0.2
            if "MOVIE_DIRECTOR_PT_connection_status" in panels_here():
                S["phase"] = "connected"
            else:
                left, top, right, bottom = rect()
                if top + 12 + 28 * S["k"] > bottom:  # 28 px: shorter than the Movie Director tab
                    raise RuntimeError("no Movie Director tab in the sidebar")
                click(right - 10, top + 12 + 28 * S["k"])
                S["k"] += 1
                return 0.6
        elif phase == "connected":
            up = [s for s in state.services if s.state == "connected"]
            if len(up) >= 4 and state.llm_state not in ("offline", "missing", ""):
                # Scroll to the bottom of the tab, where the closed Health Monitoring header is.
                left, top, right, bottom = rect()
                xdo("mousemove", left + 60, (top + bottom) // 2, "click", "--repeat", 60, 5)
                S["drawn"], S["give_up"] = S["draws"], time.monotonic() + 8.0  # the wheel, like a click
                S["phase"], S["k"] = "header", 0
                return 0.6
        elif phase == "header":  # up the left margin from the bottom to the closed header
            if not clicked_and_drawn():
                return 0.2
            if "MOVIE_DIRECTOR_PT_health_dashboard" in panels_here():
                S["phase"] = "history"
            else:
                left, top, right, bottom = rect()
                if bottom - 12 - 8 * S["k"] < top:
                    raise RuntimeError("no Health Monitoring header found")
                click(left + 15, bottom - 12 - 8 * S["k"])
                S["k"] += 1
                return 0.6
        elif phase == "history":  # every connected service has its chart: start counting
            names = [s.name for s in state.services if s.state == "connected"]
            if all(any(k.startswith(f"trend.{n}.") for k in pictures._signatures) for n in names):
                xdo("mousemove", 10, 10)  # the pointer leaves the sidebar: only natural redraws now
                S["phase"] = "measure"
        elif phase == "measure":
            save()
            if len(result["draw_ms"]) >= WANT:
                return finish()
        return 0.2
    except Exception:  # noqa: BLE001
        import traceback
        result["errors"].append(traceback.format_exc())
        return finish()


def finish():
    try:
        result["services"] = {s.name: s.state for s in state.services}
        result["region_width"] = sidebar().width
        result["panels"] = sorted(panels_here())
        save()
        bpy.ops.movie_director.stop_monitor()
    finally:
        bpy.app.timers.register(quit_now, first_interval=0.5)
    return None


bpy.app.timers.register(step, first_interval=1.0)
