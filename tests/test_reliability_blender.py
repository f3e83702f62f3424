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
        _ticks(runtime, 20.0, until=lambda: _state().online and _state().services["comfyui"].state == "connected")
        recovered = time.monotonic() - t1
    assert not runtime.RT.errors_logged, runtime.RT.errors_logged
    (off_med, off_max), (on_med, on_max), (lost_med, lost_max) = _ms(offline), _ms(online), _ms(lost)
    # Never blocks: no tick anywhere near a frame (generous for a shared machine).
    assert max(off_max, lost_max) < 100, (off_max, lost_max)
    # Keeps its tick cost: offline ticks cost no more than online idle ones (plus noise).
    assert off_med <= max(3 * on_med, 0.5) and lost_med <= max(3 * on_med, 0.5), (off_med, lost_med, on_med)
    assert recovered <= 2.0, recovered
    measured.record("blender_no_aggregator", section="Faults", order=50,
                    case="Blender side with no aggregator, then the aggregator killed (kill -9) under a live "
                         "session, then restarted",
                    required="the timer never raises, never blocks, and keeps its tick cost; recovers within 2 s",
                    measured=f"{len(offline) + len(online) + len(lost):,} timer calls, 0 exceptions; tick median/max: "
                             f"no aggregator {off_med * 1000:.0f}/{off_max * 1000:.0f} µs, online idle "
                             f"{on_med * 1000:.0f}/{on_max * 1000:.0f} µs, after the kill {lost_med * 1000:.0f}/"
                             f"{lost_max * 1000:.0f} µs; \"offline\" shown {offline_after:.1f} s after the kill; "
                             f"live again {recovered:.2f} s after the restart bound its sockets",
                    offline_median_us=round(off_med * 1000), online_median_us=round(on_med * 1000),
                    recovered_s=round(recovered, 3))
