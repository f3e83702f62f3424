"""The add-on in a real Blender window: Debian's `blender` (3.4) under Xvfb.

The test writes a driver script that Blender runs at start-up. The driver enables the
add-on, starts the local monitor with the add-on's own Start operator against fake
backends, and waits for the states the test controls, each seen through the add-on's
draw-time trace (what the panels really drew): ComfyUI up and Wan2GP down (yellow), then
ComfyUI killed (red), then the monitor stopped ("Monitor offline"); finally it starts the
monitor again and quits Blender, which must stop it. It screenshots each
state (MD_HEALTH_SCREENSHOTS=1 copies them into docs/screenshots/). Here the timer really
fires, as it does for the artist.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"

BLENDER = shutil.which("blender")
XVFB_RUN = shutil.which("xvfb-run")

DRIVER = textwrap.dedent(r'''
    import json, os, sys, time
    sys.path.insert(0, os.environ["MD_TEST_ROOT"])
    import bpy, addon_utils

    OUT = os.environ["MD_TEST_OUT"]
    results = {"steps": [], "errors": []}

    def note(**kw):
        results["steps"].append({"t": time.time(), **kw})
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(results, f, indent=1)

    def quit_now():
        bpy.ops.wm.quit_blender()
        return None

    try:
        from tests.fakes.comfyui import FakeComfyUI
        fake = FakeComfyUI(int(os.environ["MD_TEST_COMFY_PORT"])).start()

        addon_utils.enable("blender_ui", default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons["blender_ui"].preferences
        prefs.events, prefs.snapshots, prefs.requests = (os.environ["MD_HEALTH_EVENTS"],
            os.environ["MD_HEALTH_SNAPSHOTS"], os.environ["MD_HEALTH_REQUESTS"])
        prefs.monitor_python = os.environ["MD_TEST_PYTHON"]
        from blender_ui import runtime
        state = bpy.context.window_manager.movie_director_health
    except Exception:
        import traceback
        results["errors"].append(traceback.format_exc())
        note(step="setup failed")
        bpy.app.timers.register(quit_now, first_interval=0.1)
        raise

    def layout():
        # The big 3D Viewport becomes a Properties editor, then (once it exists) its Scene tab
        # is chosen: the panels are at full height there, with the dashboard open.
        for area in bpy.context.window_manager.windows[0].screen.areas:
            if area.type == "VIEW_3D":
                area.type = "PROPERTIES"
                return 0.3
            if area.type == "PROPERTIES":  # the wide one, and Blender's narrow one at the right
                area.spaces.active.context = "SCENE"
        note(step="layout", dirty=bpy.data.is_dirty)
        return None

    def shot(name):
        path = os.path.join(OUT, name)
        bpy.ops.screen.screenshot(filepath=path)
        note(step="screenshot", file=name, overall=state.overall, online=state.online,
             services={s.name: s.state for s in state.services}, dirty=bpy.data.is_dirty)

    def svc(name):
        item = state.services.get(name)
        return item.state if item else None

    plan = [
        ("start", lambda: True, lambda: note(step="start-op", ops=list(bpy.ops.movie_director.start_monitor()))),
        ("up", lambda: svc("comfyui") == "connected" and svc("wan2gp") in ("disconnected", "error")
                       and runtime.RT.client.services.get("comfyui", {}).get("stats", {}).get("count", 0) >= 4,
         lambda: [setattr(state.services["comfyui"], "show_details", True),
                  setattr(state.services["wan2gp"], "show_details", True)]),
        ("drawn-up", lambda: time.time() > T["since"] + 2.0, lambda: shot("blender-panels.png")),
        ("kill", lambda: True, lambda: fake.stop()),
        ("down", lambda: svc("comfyui") in ("disconnected", "error"), lambda: None),
        ("drawn-down", lambda: time.time() > T["since"] + 1.5, lambda: shot("blender-comfyui-down.png")),
        ("stop", lambda: True, lambda: note(step="stop-op", ops=list(bpy.ops.movie_director.stop_monitor()))),
        ("offline", lambda: state.overall == "OFFLINE", lambda: None),
        ("drawn-offline", lambda: time.time() > T["since"] + 1.5, lambda: shot("blender-monitor-offline.png")),
        # Start it again and quit Blender without disabling anything: the children must stop.
        ("restart", lambda: True, lambda: note(step="restart-op", ops=list(bpy.ops.movie_director.start_monitor()))),
        ("online-again", lambda: state.online and svc("wan2gp") is not None, lambda: None),
    ]
    T = {"since": time.time(), "deadline": time.time() + float(os.environ["MD_TEST_TIMEOUT"])}

    def step():
        try:
            if time.time() > T["deadline"]:
                results["errors"].append(f"timed out waiting for {plan[0][0]}: overall {state.overall}, "
                                         f"services { {s.name: s.state for s in state.services} }")
                return finish()
            name, ready, action = plan[0]
            if ready():
                action()
                note(step=name)
                plan.pop(0)
                T["since"] = time.time()
                if not plan:
                    return finish()
        except Exception as exc:
            import traceback
            results["errors"].append(traceback.format_exc())
            return finish()
        return 0.1

    def finish():
        try:
            note(step="finish", dirty=bpy.data.is_dirty, timer=bpy.app.timers.is_registered(runtime.tick),
                 children=[p.pid for p in runtime.RT.children.values()])
        finally:
            bpy.app.timers.register(quit_now, first_interval=0.1)  # quit with the add-on enabled
        return None

    bpy.app.timers.register(layout, first_interval=0.2)
    bpy.app.timers.register(step, first_interval=0.5)
''')


@pytest.mark.skipif(not (BLENDER and XVFB_RUN), reason="needs Debian's blender and xvfb (.ci/run installs them)")
def test_panels_in_a_real_blender_window(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    start_blend = tmp_path / "start.blend"  # a file on the command line: no splash screen
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-expr",
                    f"import bpy; bpy.ops.wm.save_as_mainfile(filepath={str(start_blend)!r})"],
                   check=True, capture_output=True, timeout=120)
    comfy_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [services.comfyui]
        url = "http://127.0.0.1:{comfy_port}"
        required = true
        interval = 0.5
        [services.wan2gp]
        url = "http://127.0.0.1:{free_port()}"
        required = false
        interval = 0.5
    """))
    trace = out / "trace.jsonl"
    env = {**os.environ, "MD_TEST_ROOT": str(ROOT), "MD_TEST_OUT": str(out), "MD_TEST_PYTHON": sys.executable,
           "MD_TEST_COMFY_PORT": str(comfy_port), "MD_TEST_TIMEOUT": "90", "MD_HEALTH_CONFIG": str(config),
           "MD_HEALTH_UI_TRACE": str(trace), "MD_HEALTH_EVENTS": f"tcp://127.0.0.1:{free_port()}",
           "MD_HEALTH_SNAPSHOTS": f"tcp://127.0.0.1:{free_port()}",
           "MD_HEALTH_REQUESTS": f"tcp://127.0.0.1:{free_port()}"}
    log = tmp_path / "blender.log"
    with open(log, "w") as f:
        # Its own process group, so a hung Blender is killed with xvfb-run, never left behind.
        proc = subprocess.Popen([XVFB_RUN, "-a", "-s", "-screen 0 1280x2400x24", BLENDER, "--factory-startup",
                                 str(start_blend), "--python", str(driver)],
                                env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("Blender did not finish within 150 s:\n" + log.read_text()[-3000:])
    results = json.loads((out / "results.json").read_text())
    assert not results["errors"], results["errors"][0] + log.read_text()[-3000:]
    steps = {s["step"]: s for s in results["steps"]}
    assert steps["start-op"]["ops"] == ["FINISHED"]
    assert steps["finish"]["timer"] is True  # the timer kept running all along
    assert steps["restart-op"]["ops"] == ["FINISHED"] and len(steps["finish"]["children"]) == 2
    # Quitting Blender stopped the monitor it had started.
    deadline = time.monotonic() + 15
    left = steps["finish"]["children"]
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not left, f"still running after Blender quit: {left}"

    # What the panels drew, per state the test set up.
    drawn = [json.loads(line) for line in trace.read_text().splitlines()]
    status = [d for d in drawn if d["panel"] == "connection_status"]
    assert any(d["services"].get("comfyui") == "connected" and d["services"].get("wan2gp") in ("disconnected", "error")
               and d["overall"] == "YELLOW" for d in status), "never drew ComfyUI up with Wan2GP down"
    assert any(d["services"].get("comfyui") in ("disconnected", "error") and d["overall"] == "RED" for d in status)
    assert any(d["overall"] == "OFFLINE" and not d["online"] for d in status)
    dash = [d for d in drawn if d["panel"] == "health_dashboard"]
    assert any("comfyui" in d["services"] and d["services"]["comfyui"]["p95"] != "—" for d in dash)
    # Runtime status never marks the user's file as modified.
    assert not any(s.get("dirty") for s in results["steps"] if "dirty" in s)

    shots = [s for s in results["steps"] if s["step"] == "screenshot"]
    assert [s["overall"] for s in shots] == ["YELLOW", "RED", "OFFLINE"]
    sizes = set()
    for s in shots:
        png = out / s["file"]
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
        sizes.add(len(data))
        # docs/screenshots/ keeps the pictures the README shows. They are replaced only on
        # request, so a test run does not leave changed binaries in everyone's work tree.
        if os.environ.get("MD_HEALTH_SCREENSHOTS") == "1" or not (SHOTS / s["file"]).exists():
            SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, SHOTS / s["file"])
    assert len(sizes) == 3  # three different pictures
