"""The legacy zip in Debian's Blender 3.4.1 (a real window under Xvfb): installed as an
artist installs it, with nothing pip-installed anywhere, *Start Local Monitor* runs the
aggregator and probes on Blender's own Python (sys.executable) from the zip's wheels, and
the panels turn the fake ComfyUI green. Blender's timer really fires here.

Blender's own Python is whatever `sys.executable` names: Debian's build finds python3.11
on PATH (on this machine pyenv's bare 3.11.7, which has none of the packages), so the
children can only work from what the zip carries.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

import psutil
import pytest

from tests.addon_build import FAKE_CONFIG, zip_path
from tests.fakes.comfyui import FakeComfyUI

BLENDER = shutil.which("blender")
XVFB_RUN = shutil.which("xvfb-run")

DRIVER = textwrap.dedent(r'''
    import json, os, sys, time
    import bpy, addon_utils
    OUT = os.environ["MD_TEST_OUT"]
    results = {"steps": [], "errors": [], "python": sys.executable, "version": list(bpy.app.version)}
    NAME = "movie_director_health"

    def note(**kw):
        results["steps"].append({"t": time.time(), **kw})
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(results, f, indent=1)

    def quit_now():
        bpy.ops.wm.quit_blender()
        return None

    try:
        bpy.ops.preferences.addon_install(filepath=os.environ["MD_TEST_ZIP"])
        addon_utils.enable(NAME, default_set=True, handle_error=None)
        from movie_director_health import deps
        prefs = bpy.context.preferences.addons[NAME].preferences
        prefs.events, prefs.snapshots, prefs.requests = (os.environ["MD_HEALTH_EVENTS"],
            os.environ["MD_HEALTH_SNAPSHOTS"], os.environ["MD_HEALTH_REQUESTS"])
        state = bpy.context.window_manager.movie_director_health
        note(step="enabled", missing=deps.MISSING, bus=deps.BUS_PACKAGE,
             child_path=deps.child_environment(sys.executable)["PYTHONPATH"])
    except Exception:
        import traceback
        results["errors"].append(traceback.format_exc())
        note(step="setup failed")
        bpy.app.timers.register(quit_now, first_interval=0.1)
        raise

    T = {"deadline": time.time() + float(os.environ["MD_TEST_TIMEOUT"]), "started": False}

    def svc(name):
        item = state.services.get(name)
        return item.state if item else None

    def step():
        try:
            if not T["started"]:
                T["started"] = True
                note(step="start-op", ops=list(bpy.ops.movie_director.start_monitor()), message=state.message)
                return 0.2
            if svc("comfyui") == "connected" and state.overall == "GREEN":
                note(step="green", overall=state.overall, services={s.name: s.state for s in state.services})
                return finish()
            if time.time() > T["deadline"]:
                results["errors"].append(f"never green: overall {state.overall}, message {state.message!r}, "
                                         f"services { {s.name: s.state for s in state.services} }")
                return finish()
        except Exception:
            import traceback
            results["errors"].append(traceback.format_exc())
            return finish()
        return 0.1

    def finish():
        import psutil  # the zip's own wheel, on the path deps.py made
        children = [c.pid for c in psutil.Process().children(recursive=True)]
        addon_utils.disable(NAME, default_set=True, handle_error=None)
        note(step="disabled", children=children,
             classes=sorted(n for n in dir(bpy.types) if n.startswith("MOVIE_DIRECTOR_")))
        bpy.app.timers.register(quit_now, first_interval=0.1)
        return None

    bpy.app.timers.register(step, first_interval=0.5)
''')


@pytest.mark.skipif(not (BLENDER and XVFB_RUN), reason="needs Debian's blender and xvfb (.ci/run installs them)")
def test_legacy_zip_starts_its_monitor_on_blenders_own_python(tmp_path, endpoints):
    out = tmp_path / "out"
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = tmp_path / "config.toml"
    config.write_text(FAKE_CONFIG + "[services.comfyui]\ninterval = 0.5\n")
    log = tmp_path / "blender.log"
    with FakeComfyUI() as fake:
        env = {**os.environ, "MD_TEST_OUT": str(out), "MD_TEST_ZIP": str(zip_path("legacy")), "MD_TEST_TIMEOUT": "90",
               "MD_HEALTH_CONFIG": str(config), "MD_HEALTH_COMFYUI_URL": fake.url,
               "MD_HEALTH_WHEEL_CACHE": str(tmp_path / "wheel-cache"),
               "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts"), "BLENDER_USER_CONFIG": str(tmp_path / "config")}
        with open(log, "w") as f:
            # Its own process group, so a hung Blender is killed with xvfb-run, never left behind.
            proc = subprocess.Popen([XVFB_RUN, "-a", BLENDER, "--factory-startup", "--python", str(driver)],
                                    env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail("Blender did not finish within 180 s:\n" + log.read_text()[-3000:])
    results = json.loads((out / "results.json").read_text())
    monitor_logs = "".join(p.read_text()[-2000:] for p in tmp_path.glob("**/monitor.log"))
    assert not results["errors"], "\n".join(results["errors"]) + log.read_text()[-3000:] + monitor_logs
    steps = {s["step"]: s for s in results["steps"]}
    assert results["version"][:2] == [3, 4]
    assert steps["enabled"]["missing"] == "" and steps["enabled"]["bus"] == "movie_director_health.bus"
    child_path = steps["enabled"]["child_path"].split(os.pathsep)
    assert child_path[0] == str(tmp_path / "scripts" / "addons" / "movie_director_health")
    assert all(p.startswith(str(tmp_path / "wheel-cache")) or p.startswith(child_path[0]) for p in child_path[1:])
    assert steps["start-op"]["ops"] == ["FINISHED"]
    assert steps["green"]["services"]["comfyui"] == "connected"
    assert steps["disabled"]["classes"] == []
    # Disabling stopped the monitor it had started.
    left = steps["disabled"]["children"]
    assert len(left) >= 2  # the aggregator, the probe supervisor and its probes
    deadline = time.monotonic() + 15
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not left, f"still running after the add-on was disabled: {left}"
