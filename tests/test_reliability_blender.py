"""The Blender side under faults, in real bpy (timers do not fire in the bpy module, so the
timer callback is called directly, as Blender would): no aggregator at all, then an
aggregator killed with kill -9 under a live session, then its restart."""
from __future__ import annotations

import statistics
import time

import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402 - ships with bpy

from bus.sockets import endpoint_in_use  # noqa: E402
from tests.fakes.comfyui import FakeComfyUI  # noqa: E402
from tests.reliability import measured  # noqa: F401,E402 - fixture

ADDON = "blender_ui"


def _state():
    return bpy.context.window_manager.movie_director_health


def _ticks(runtime, seconds: float, until=None) -> list[float]:
    """Call the timer for `seconds` (or until `until()`), return each call's duration."""
    costs = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        interval = runtime.tick()
        costs.append(time.perf_counter() - t)
        assert interval and interval > 0  # the timer stays registered
        if until is not None and until():
            break
        time.sleep(0.01)
    return costs


@pytest.fixture
def runtime(endpoints):
    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert mod is not None
    from blender_ui import runtime as rt
    p = bpy.context.preferences.addons[ADDON].preferences
    p.events, p.snapshots, p.requests = endpoints.events, endpoints.snapshots, endpoints.requests
    yield rt
    addon_utils.disable(ADDON, default_set=True, handle_error=None)


def _ms(costs):
    return statistics.median(costs) * 1000, max(costs) * 1000


def _p99_ms(costs):
    return sorted(costs)[int(0.99 * (len(costs) - 1))] * 1000


def test_timer_without_and_after_losing_the_aggregator(runtime, endpoints, procs, measured):
    # 1. No aggregator at all.
    offline = _ticks(runtime, 3.0)
    assert not _state().online and not runtime.RT.errors_logged
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        agg = procs.aggregator()
        _ticks(runtime, 30.0, until=lambda: _state().online and _state().services.get("comfyui")
               and _state().services["comfyui"].state == "connected")
        assert _state().online
        online = _ticks(runtime, 3.0)
        # 2. kill -9 under a live session.
        old_instance = runtime.RT.client.aggregator.get("instance")
        assert old_instance
        agg.kill()
        t0 = time.monotonic()
        lost = _ticks(runtime, 15.0, until=lambda: not _state().online)
        offline_after = time.monotonic() - t0
        assert not _state().online
        lost += _ticks(runtime, 1.0)
        # 3. Restart: back by itself.
        procs.aggregator()
        while not endpoint_in_use(endpoints.requests, timeout=0.05):
            lost += _ticks(runtime, 0.05)
        t1 = time.monotonic()
        client = runtime.RT.client
        _ticks(runtime, 20.0, until=lambda: _state().online and client.has_snapshot
               and client.aggregator.get("instance") not in (None, old_instance)
               and _state().services["comfyui"].state == "connected")
        recovered = time.monotonic() - t1
        assert client.aggregator.get("instance") != old_instance and client.has_snapshot
    assert not runtime.RT.errors_logged, runtime.RT.errors_logged
    (off_med, off_max), (on_med, on_max), (lost_med, lost_max) = _ms(offline), _ms(online), _ms(lost)
    # Never blocks. Bench figure 4 holds the tight bound (under 2 ms at worst); here, on a
    # shared machine whose scheduler may pause any one tick, 99 % of ticks stay inside one frame
    # at 60 fps (8x that figure) and none takes half a second (a blocking receive would wait
    # until the aggregator came back).
    for costs in (offline, lost):
        assert _p99_ms(costs) < 16.7 and max(costs) * 1000 < 500, (_p99_ms(costs), max(costs) * 1000)
    # Keeps its tick cost: offline ticks cost no more than online idle ones (plus noise).
    assert off_med <= max(3 * on_med, 0.5) and lost_med <= max(3 * on_med, 0.5), (off_med, lost_med, on_med)
    # About 1 s on a quiet machine; 6 s keeps 3x margin over the 2 s the document promises.
    assert recovered <= 6.0, recovered
    measured.record("blender_no_aggregator", section="Faults", order=50,
                    case="Blender side with no aggregator, then the aggregator killed (kill -9) under a live "
                         "session, then restarted",
                    required="the timer never raises, never blocks (99 % of ticks < 16.7 ms, none ≥ 500 ms on a "
                             "shared test machine), and keeps its tick cost; live again within 6 s of the restart "
                             "(3x the 2 s target)",
                    measured=f"{len(offline) + len(online) + len(lost):,} timer calls, 0 exceptions; tick median/max: "
                             f"no aggregator {off_med * 1000:.0f}/{off_max * 1000:.0f} µs, online idle "
                             f"{on_med * 1000:.0f}/{on_max * 1000:.0f} µs, after the kill {lost_med * 1000:.0f}/"
                             f"{lost_max * 1000:.0f} µs; \"offline\" shown {offline_after:.1f} s after the kill; "
                             f"live again {recovered:.2f} s after the restart bound its sockets",
                    offline_median_us=round(off_med * 1000), online_median_us=round(on_med * 1000),
                    recovered_s=round(recovered, 3))


OTHER_MACHINE = r'''
import sys, time
import bpy, addon_utils
sys.path.insert(0, sys.argv[-1])
addon_utils.enable("blender_ui", default_set=True, handle_error=None)
from blender_ui import runtime
p = bpy.context.preferences.addons["blender_ui"].preferences
p.events, p.snapshots, p.requests = sys.argv[-5:-2]
wm = bpy.context.window_manager
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    runtime.tick()
    s = wm.movie_director_health.services.get("comfyui")
    if wm.movie_director_health.online and s and s.state == "connected":
        break
    time.sleep(0.05)
else:
    sys.exit("the other machine never saw comfyui connected")
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-2], compress=False)
print("saved while online")
'''


def test_blend_saved_on_another_machine_comes_up_clean(runtime, endpoints, procs, tmp_path, measured):
    """Another machine (another process, other endpoints, a live aggregator) saves a .blend
    with the add-on running; here, with no aggregator, opening it comes up clean."""
    import subprocess
    import sys

    from bus.sockets import Endpoints
    from tests.conftest import ROOT
    from tests.fakes.base import free_port

    theirs = Endpoints.on_ports(free_port(), free_port(), free_port())
    blend = tmp_path / "from-another-machine.blend"
    with FakeComfyUI() as fake:
        env = {"MD_HEALTH_EVENTS": theirs.events, "MD_HEALTH_SNAPSHOTS": theirs.snapshots,
               "MD_HEALTH_REQUESTS": theirs.requests}
        procs.aggregator(env=env)
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5", env=env)
        script = tmp_path / "other_machine.py"
        script.write_text(OTHER_MACHINE)
        out = subprocess.run([sys.executable, str(script), theirs.events, theirs.snapshots, theirs.requests,
                              str(blend), str(ROOT)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert out.returncode == 0 and "saved while online" in out.stdout, out.stdout + out.stderr
    _ticks(runtime, 0.5)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    costs = _ticks(runtime, 4.0)
    st = _state()
    assert bpy.app.timers.is_registered(runtime.tick)
    assert not st.online and not runtime.RT.errors_logged
    assert not any(s.state == "connected" for s in st.services), [(s.name, s.state) for s in st.services]
    assert b"movie_director_health" not in blend.read_bytes()  # no runtime status travels in the file
    p = bpy.context.preferences.addons[ADDON].preferences
    assert p.events == endpoints.events  # this machine's settings, not the file's machine's
    measured.record("blend_other_machine", section="Faults", order=55,
                    case="A .blend saved on another machine (live add-on, other endpoints) opened here with no "
                         "aggregator",
                    required="the add-on comes up clean",
                    measured=f"timer still registered, {len(costs)} ticks without an exception (max "
                             f"{max(costs) * 1000:.1f} ms), shows offline with no stale 'connected' from the other "
                             "machine; no runtime status is stored in the file; local endpoints kept")
