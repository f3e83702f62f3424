"""The Blender add-on in real bpy (5.0.x from PyPI), against real processes on loopback.

Timers never fire in the bpy module, so the tests call the timer callback directly, as
Blender would. Nothing here mocks bpy or pyzmq.
"""
from __future__ import annotations

import sys
import threading
import time

import psutil
import pytest
import zmq

import bpy  # noqa: E402 - real bpy, installed by the Makefile (pyproject [test])
import addon_utils  # noqa: E402 - ships with bpy

from bus.protocol import decode, encode
from bus.sockets import Endpoints
from tests.fakes.base import free_port
from tests.fakes.comfyui import FakeComfyUI

ADDON = "blender_ui"


def _enable():
    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert mod is not None, "the add-on failed to enable"
    from blender_ui import runtime
    return runtime


def _disable():
    addon_utils.disable(ADDON, default_set=True, handle_error=None)


@pytest.fixture
def addon(endpoints):
    runtime = _enable()
    use_endpoints(endpoints)
    yield runtime
    _disable()


def prefs():
    return bpy.context.preferences.addons[ADDON].preferences


def state():
    return bpy.context.window_manager.movie_director_health


def use_endpoints(ep: Endpoints) -> None:
    p = prefs()
    p.events, p.snapshots, p.requests = ep.events, ep.snapshots, ep.requests


def tick_until(runtime, predicate, timeout=20.0):
    """Call the timer callback as Blender would, until predicate() holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        interval = runtime.tick()
        assert interval == pytest.approx(prefs().interval)
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError(f"not reached in {timeout} s: services "
                         f"{[(s.name, s.state) for s in state().services]}, online {state().online}")


def item(name):
    return state().services.get(name)


def _addon_classes():
    from blender_ui import operators, panels, prefs, props
    return [cls for mod in (props, prefs, operators, panels) for cls in mod.classes]


def _resources():
    me = psutil.Process()
    return me.num_threads(), len(me.net_connections(kind="tcp")), len(me.children(recursive=True))


def _statusbar_funcs():
    return getattr(bpy.types.STATUSBAR_HT_header.draw, "_draw_funcs", [])


def test_enable_disable_twenty_times_leaves_nothing_behind():
    from blender_ui import keymap, panels, pictures, statusbar
    _enable(); _disable()  # first import creates lasting module state; measure after it
    threads, conns, children = _resources()
    for _ in range(20):
        runtime = _enable()
        assert bpy.app.timers.is_registered(runtime.tick)
        assert hasattr(bpy.types, "MOVIE_DIRECTOR_PT_connection_status")
        assert all(cls.is_registered for cls in _addon_classes())
        assert runtime.RT.client is not None
        _disable()
        assert not bpy.app.timers.is_registered(runtime.tick)
        assert runtime.RT.client is None and pictures._pcoll is None
        assert not keymap._items and statusbar.draw not in _statusbar_funcs()
    for cls in panels.classes:
        assert not hasattr(bpy.types, cls.bl_idname), cls.bl_idname
    assert not hasattr(bpy.types.WindowManager, "movie_director_health")
    assert not any(cls.is_registered for cls in _addon_classes())
    # Nothing of ours is left (other tests' background threads may only have finished meanwhile).
    after = _resources()
    assert after[0] <= threads and after[1] <= conns and after[2] <= children, (after, (threads, conns, children))


def test_registers_panels_in_three_editors_with_the_agreed_ids(addon):
    t = bpy.types
    assert t.MOVIE_DIRECTOR_PT_connection_status.bl_space_type == "VIEW_3D"
    assert t.MOVIE_DIRECTOR_PT_connection_status.bl_category == "Movie Director"
    assert t.MOVIE_DIRECTOR_PT_health_dashboard.bl_parent_id == "MOVIE_DIRECTOR_PT_connection_status"
    assert t.MOVIE_DIRECTOR_PT_connection_status_sequencer.bl_space_type == "SEQUENCE_EDITOR"
    assert t.MOVIE_DIRECTOR_PT_connection_status_properties.bl_space_type == "PROPERTIES"
    assert prefs().interval <= 0.1  # the default meets the 100 ms criterion


def test_reload_scripts_keeps_one_timer_and_one_client(addon):
    """What F3 "Reload Scripts" does to an enabled add-on (addon_utils.reset_all): disable,
    importlib.reload the package (whose __init__ reloads its submodules), enable."""
    import importlib
    import sys as _sys

    runtime = addon
    old_tick, old_client, old_rt = runtime.tick, runtime.RT.client, runtime.RT
    threads = psutil.Process().num_threads()
    _disable()
    importlib.reload(_sys.modules[ADDON])
    runtime = _enable()
    assert runtime.RT is not old_rt and runtime.tick is not old_tick  # the code really was reloaded
    assert not bpy.app.timers.is_registered(old_tick)
    assert bpy.app.timers.is_registered(runtime.tick)
    assert old_client.sub.closed and runtime.RT.client is not None
    assert hasattr(bpy.types, "MOVIE_DIRECTOR_PT_connection_status")
    assert psutil.Process().num_threads() <= threads  # one zmq context, not two


def test_offline_without_aggregator_then_live_status_then_recovery(addon, procs, tmp_path):
    runtime = addon
    tick_until(runtime, lambda: state().overall == "OFFLINE" and item("comfyui").state == "offline")
    assert not state().online
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        agg = procs.aggregator()
        tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected")
        comfy = item("comfyui")
        assert state().online and comfy.version == fake.version and comfy.last_check.count(":") == 2
        assert state().overall == "GREEN", state().overall_reason  # comfyui is required by default config
        assert item("wan2gp").state == "missing"
        # The timer wrote only the window manager: a saved file does not carry it. (The bpy module
        # reports every file as dirty, so "not marked modified" is checked in the GUI test.)
        blend = tmp_path / "scene.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend), compress=False)
        assert b"movie_director_health" not in blend.read_bytes()

        # An unchanged world writes nothing: ticks without news leave the update counter alone.
        runtime.RT.client.poll()  # swallow what is waiting
        before = state().updates
        runtime.sync(state(), runtime.RT.client)
        assert state().updates == before

        # Refresh via the operator: the probe checks again and a newer last_check arrives.
        record = lambda: runtime.RT.client.services["comfyui"]  # noqa: E731
        seen = record()["last_check"]
        assert bpy.ops.movie_director.refresh() == {"FINISHED"}
        tick_until(runtime, lambda: record()["last_check"] > seen, timeout=10)

        # Loading another file keeps the timer, and the status comes back on the new window manager.
        bpy.ops.wm.read_homefile(use_empty=True)
        assert bpy.app.timers.is_registered(runtime.tick)
        tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected")

        fake.stop()  # the backend dies: its box turns red live
        tick_until(runtime, lambda: item("comfyui").state in ("disconnected", "error"))
        assert state().overall == "RED" and "ComfyUI" in state().overall_reason
        assert item("comfyui").error

        procs.children.remove(agg)
        from bus.lifeline import stop
        stop(agg)  # the aggregator goes away: "Monitor offline", never stale lights
        tick_until(runtime, lambda: state().overall == "OFFLINE" and item("comfyui").state == "offline")
        procs.aggregator()  # it comes back: the add-on reconnects by itself
        tick_until(runtime, lambda: state().online and item("comfyui").state in ("disconnected", "error"))


def test_timer_survives_an_exception(addon):
    runtime = addon

    real = runtime.RT.client

    class Broken:  # a client whose every poll fails (the timer also polls it once a second)
        online = False
        services: dict = {}
        rejects = real.rejects

        def poll(self, *a, **k):
            raise RuntimeError("boom")

    runtime.RT.client = Broken()
    runtime.RT.last_second = 0  # make the next tick a once-a-second one
    try:
        assert runtime.tick() == pytest.approx(prefs().interval)
        assert runtime.tick() == pytest.approx(prefs().interval)
    finally:
        runtime.RT.client = real
    assert "RuntimeError: boom" in runtime.RT.errors_logged
    assert bpy.app.timers.is_registered(runtime.tick)


class FakeAggregator:
    """A minimal aggregator on real sockets: heartbeats, snapshot and export replies in the
    contract's shapes, so the export operator is tested whatever the real aggregator does."""

    def __init__(self, ep: Endpoints, export_reply):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(ep.snapshots)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(ep.requests)
        self.export_reply = export_reply
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        seq = 0
        while not self.stop.is_set():
            seq += 1
            self.pub.send(encode("heartbeat.aggregator", "aggregator", seq,
                                 {"interval": 0.2, "instance": "fake", "alerts": []}))
            if self.router.poll(200):
                ident, frame = self.router.recv_multipart()
                msg = decode(frame)
                self.requests.append({"topic": msg.topic, **msg.body})
                op = msg.topic.split(".", 1)[1]
                body = {"ok": True, "id": msg.body["id"], "seq": seq, "state": {"instance": "fake", "services": {}}}
                if op == "export":
                    body = {"id": msg.body["id"], **self.export_reply}
                self.router.send_multipart([ident, encode(f"reply.{op}", "aggregator", seq, body)])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.pub.close(0)
        self.router.close(0)
        self.ctx.term()


def test_export_metrics_writes_what_the_monitor_served(addon, endpoints, tmp_path):
    runtime = addon
    reply = {"ok": True, "format": "csv", "rows": 2, "content": "ts,service,p95_ms\n1,comfyui,12\n2,comfyui,14\n"}
    with FakeAggregator(endpoints, reply) as agg:
        tick_until(runtime, lambda: state().online)
        target = tmp_path / "out" / "metrics"
        assert bpy.ops.movie_director.export_metrics(filepath=str(target), format="csv", range="1h") == {"FINISHED"}
        written = tmp_path / "out" / "metrics.csv"
        assert written.read_text() == reply["content"]
        assert str(written) in state().message and "2 rows" in state().message
        req = [r for r in agg.requests if r["topic"] == "request.export"][-1]
        assert req["format"] == "csv" and req["since"] == "1h" and req["tier"] == "10s"

        agg.export_reply = {"ok": False, "error": "no data for that range"}
        with pytest.raises(RuntimeError, match="Export failed: no data for that range"):
            bpy.ops.movie_director.export_metrics(filepath=str(target), format="json", range="24h")
        assert "no data for that range" in state().message
        assert not (tmp_path / "out" / "metrics.json").exists()


def test_export_and_refresh_refuse_cleanly_when_offline(addon, tmp_path):
    runtime = addon
    tick_until(runtime, lambda: state().overall == "OFFLINE")
    assert bpy.ops.movie_director.refresh() == {"CANCELLED"}
    with pytest.raises(RuntimeError, match="Monitor offline"):  # an ERROR report raises in bpy.ops
        bpy.ops.movie_director.export_metrics(filepath=str(tmp_path / "x.csv"))
    assert not (tmp_path / "x.csv").exists()
    assert bpy.ops.movie_director.copy_error(service="comfyui") == {"CANCELLED"}


def test_a_mistyped_endpoint_is_reported_not_raised(addon, endpoints):
    runtime = addon
    prefs().snapshots = "tcp://127.0.0.1:notaport"
    assert runtime.RT.client is None
    assert "Cannot use these endpoints" in state().message
    assert runtime.tick() == pytest.approx(prefs().interval)  # the timer keeps going, quietly
    assert bpy.ops.movie_director.refresh() == {"CANCELLED"}
    use_endpoints(endpoints)  # fixed: connected again
    assert runtime.RT.client is not None


def test_local_monitor_start_stop_and_disable_stop_only_our_children(endpoints, procs, monkeypatch):
    with FakeComfyUI() as fake:
        monkeypatch.setenv("MD_HEALTH_COMFYUI_URL", fake.url)
        runtime = _enable()
        try:
            use_endpoints(endpoints)
            prefs().monitor_python = sys.executable
            assert bpy.ops.movie_director.start_monitor() == {"FINISHED"}
            ours = [p.pid for p in runtime.RT.monitor.children.values()]
            assert len(ours) == 2
            tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected", timeout=30)
            # monitor_state is refreshed once a second (housekeeping): wait for it, never assume it.
            tick_until(runtime, lambda: state().monitor_state == "running", timeout=30)
            assert bpy.ops.movie_director.start_monitor() == {"CANCELLED"}  # never a second one
            assert bpy.ops.movie_director.stop_monitor() == {"FINISHED"}
            tick_until(runtime, lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                                                != psutil.STATUS_ZOMBIE for pid in ours), timeout=15)
            tick_until(runtime, lambda: state().overall == "OFFLINE", timeout=15)

            # A monitor that runs outside Blender is used, never started twice, never stopped by us.
            outside = procs.aggregator()
            tick_until(runtime, lambda: state().online, timeout=20)
            assert bpy.ops.movie_director.start_monitor() == {"CANCELLED"}
            assert "already runs" in state().message
        finally:
            _disable()
        assert outside.poll() is None
        assert [c.pid for c in psutil.Process().children()] == [outside.pid]
        # Auto-start: enabling starts our own monitor when none runs; disabling stops it.
        from bus.lifeline import stop
        procs.children.remove(outside)
        stop(outside)
        runtime = _enable()  # disabling forgot the preferences: set them again, then enable
        try:
            use_endpoints(endpoints)
            prefs().monitor_python = sys.executable
            prefs().auto_start = True
            from blender_ui import lifecycle
            lifecycle.unregister()
            lifecycle.register()  # what enabling runs; auto-start happens here
            started = [p.pid for p in runtime.RT.monitor.children.values()]
            assert len(started) == 2, state().message
        finally:
            _disable()
        assert not [c for c in psutil.Process().children(recursive=True) if c.pid in started
                    and c.status() != psutil.STATUS_ZOMBIE]


def test_monitor_state_is_current_right_after_start_and_says_degraded(endpoints, procs, monkeypatch):
    """Issue 11 item 9: no tick between the click and the check; with the aggregator child
    dead the panel must not claim "starting" without a way to start it again."""
    with FakeComfyUI() as fake:
        monkeypatch.setenv("MD_HEALTH_COMFYUI_URL", fake.url)
        runtime = _enable()
        try:
            use_endpoints(endpoints)
            prefs().monitor_python = sys.executable
            assert state().monitor_state == "stopped"
            assert bpy.ops.movie_director.start_monitor() == {"FINISHED"}
            assert state().monitor_state == "starting"  # at once, not a second later
            tick_until(runtime, lambda: state().monitor_state == "running", timeout=30)
            agg = runtime.RT.monitor.children["aggregator"]
            probes = runtime.RT.monitor.children["probes"]
            agg.kill()
            agg.wait(20)
            tick_until(runtime, lambda: state().monitor_state == "degraded", timeout=20)
            assert "aggregator exited" in state().monitor_note
            assert bpy.ops.movie_director.start_monitor() == {"FINISHED"}  # restarts what exited
            children = runtime.RT.monitor.children
            assert children["probes"] is probes and children["aggregator"].pid != agg.pid  # only what exited
            tick_until(runtime, lambda: state().monitor_state == "running" and state().online, timeout=30)
            assert bpy.ops.movie_director.stop_monitor() == {"FINISHED"}
            assert state().monitor_state in ("stopping", "stopped")
        finally:
            _disable()


def _sidebar_open():
    for area in bpy.context.window_manager.windows[0].screen.areas:
        if area.type == "VIEW_3D":
            area.spaces.active.show_region_ui = True


def test_charts_render_in_the_timer_once_history_exists(addon, procs):
    runtime = addon
    from blender_ui import pictures

    _sidebar_open()
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.2")
        procs.aggregator()
        tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected", timeout=30)

        def rendered():
            return [k for k in pictures._signatures if k.startswith("trend.comfyui.5m.")]

        tick_until(runtime, lambda: rendered() and pictures.points(rendered()[0]) >= 3, timeout=30)
        preview = pictures._pcoll[rendered()[0]]
        w, h = preview.image_size
        assert w == h >= 96
        px = list(preview.image_pixels_float)
        import numpy as np
        a = np.array(px, dtype=np.float32).reshape(h, w, 4)
        from blender_ui import charts
        line = (abs(a[..., :3] - charts.P95[:3]) < 0.02).all(axis=-1) | (abs(a[..., :3] - charts.P50[:3]) < 0.02).all(axis=-1)
        assert line.sum() > 20, "the chart has no response-time line"
        # (icon ids exist only with a GUI: the GUI test sees the picture on screen)


def test_the_timer_formats_each_new_record_once_and_a_redraw_only_reads(addon, procs):
    """The panels' texts are built in the timer when a record changes (runtime.refresh_cards),
    not on every redraw: an unchanged record keeps its card, a new one or another range
    gets a fresh card, and each card says what view.card says of its record."""
    runtime = addon
    from blender_ui import view

    _sidebar_open()
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.2")
        procs.aggregator()
        tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected", timeout=30)
        client, rt = runtime.RT.client, runtime.RT
        tick_until(runtime, lambda: "comfyui" in rt.cards and rt.cards["comfyui"][2]["p95_ms"] is not None)
        record, rng, card = rt.cards["comfyui"]
        assert rng == "5m" and card == view.card(record, "5m")
        built = rt.cards["comfyui"]
        runtime.refresh_cards(client)  # nothing new: the same card, not a rebuilt one
        assert rt.cards["comfyui"] is built
        seen = record
        tick_until(runtime, lambda: client.services["comfyui"] is not seen)  # the probe's next status
        assert rt.cards["comfyui"][0] is client.services["comfyui"], "the tick that took a record built its card"
        state().metrics_range = "1h"
        runtime.refresh_cards(client)
        assert rt.cards["comfyui"][1] == "1h"
        assert rt.cards["comfyui"][2] == view.card(client.services["comfyui"], "1h")
        state().metrics_range = "5m"
        # A service the monitor has not reported (Wan2GP here) and the language models have
        # their cards too: a redraw builds none.
        runtime.refresh_cards(client)
        unreported = rt.cards["wan2gp"]
        assert unreported[0] is None and unreported[2] == view.card(None, "5m")
        runtime.refresh_cards(client)
        assert rt.cards["wan2gp"] is unreported and view.LLM in rt.cards
        client.services.pop("comfyui")  # the monitor expired it: its card says so
        runtime.refresh_cards(client)
        assert rt.cards["comfyui"][0] is None and rt.cards["comfyui"][2] == view.card(None, "5m")


def test_a_tick_renders_within_its_pixel_budget_and_no_chart_starves(addon, procs, monkeypatch):
    """The timer renders the stalest pictures first, within its pixel budget (one picture
    at least): with room for one per tick, every chart still gets its turn, again and
    again, while new data keeps changing them."""
    runtime = addon
    from blender_ui import pictures

    monkeypatch.setattr(pictures, "PIXELS_PER_TICK", 1)
    _sidebar_open()
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.1")
        procs.aggregator()
        tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected", timeout=30)
        renders: dict[str, int] = {}
        seen = dict(pictures._rendered)

        def counted():
            new = [k for k, t in pictures._rendered.items() if seen.get(k) != t]
            assert len(new) <= 1, new  # one picture per tick at this budget
            seen.update(pictures._rendered)
            for k in new:
                renders[k] = renders.get(k, 0) + 1
            # The trend chart and the Metrics History chart, each rendered again since.
            return len(renders) >= 2 and min(renders.values()) >= 2

        tick_until(runtime, counted, timeout=90)


def test_only_the_services_with_a_box_get_a_trend_chart_rendered(addon, procs):
    """Health Monitoring draws a box (and its trend chart) only for a service that answers:
    once ComfyUI is down, the timer stops rendering its trend chart while its history,
    which the Metrics History chart still shows, keeps growing."""
    runtime = addon
    from blender_ui import pictures

    _sidebar_open()
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.2")
        procs.aggregator()
        trend = lambda: {k: t for k, t in pictures._rendered.items() if k.startswith("trend.comfyui.")}  # noqa: E731
        tick_until(runtime, lambda: trend() and item("comfyui").state == "connected", timeout=30)
        fake.go_down()
        tick_until(runtime, lambda: item("comfyui").state in ("disconnected", "error"), timeout=30)
        before = trend()
        # The Metrics History chart, which has ComfyUI's failing checks in it, is rendered
        # again twice meanwhile: the timer did render the new data (and a moved time axis).
        history = lambda: {k: t for k, t in pictures._rendered.items() if k.startswith("history.")}  # noqa: E731
        renders, last = [0], history()

        def history_rendered_twice():
            nonlocal last
            if history() != last:
                renders[0], last = renders[0] + 1, history()
            return renders[0] >= 2

        tick_until(runtime, history_rendered_twice, timeout=40)
        assert trend() == before, "the timer re-rendered the trend chart of a service that has no box"


def test_dragging_the_sidebar_edge_keeps_only_the_charts_of_the_current_width(addon, procs, monkeypatch):
    """A chart is rendered per width it is shown at; the widths an artist drags a sidebar
    through leave nothing behind (a 640 px chart is 3 MB of preview pixels, twice)."""
    runtime = addon
    from blender_ui import pictures

    _sidebar_open()
    widths = iter(range(300, 620, 24))  # 14 widths, each a new chart size
    now = {"w": next(widths)}
    monkeypatch.setattr(pictures, "_sizes", lambda wm, boxes: {
        (pictures.side(now["w"], 1.0, boxes), False), (pictures.history_side(now["w"], 1.0), True)})
    with FakeComfyUI() as fake:
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.2")
        procs.aggregator()
        charts = lambda: sorted(k for k in pictures._pcoll if not k.startswith("state."))  # noqa: E731
        expected = lambda: sorted({pictures.chart_key("trend", "comfyui", "5m", pictures.side(now["w"], 1.0, 1)),  # noqa: E731
                                   pictures.chart_key("history", "all", "5m", pictures.history_side(now["w"], 1.0))})
        for w in widths:
            tick_until(runtime, lambda: charts() == expected(), timeout=30)
            now["w"] = w
        tick_until(runtime, lambda: charts() == expected(), timeout=30)
        assert set(pictures._points) <= set(expected()) and set(pictures._signatures) <= set(expected())


def test_a_chart_with_too_little_data_says_so(addon):
    from blender_ui import pictures
    assert pictures.icon(pictures.chart_key("trend", "comfyui", "5m", 256)) == 0
    assert pictures.points(pictures.chart_key("trend", "comfyui", "5m", 256)) == 0
    assert "state.connected" in pictures._pcoll and "state.disconnected" in pictures._pcoll


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("boxes", [1, 2, 3, 5])
def test_service_charts_fill_their_column_at_every_sidebar_width(scale, boxes):
    """A sidebar dragged wide, or a Properties editor: the service boxes go side by side (as
    many columns as there are boxes, at most) and each chart is as wide as its column, so
    no width is left empty beside a chart until the chart reaches its cap."""
    from blender_ui import pictures

    cap = pictures.SERVICE_MAX * scale
    for width in range(int(229 * scale), int(2600 * scale), 5):
        n, side = pictures.columns(width, scale, boxes), pictures.side(width, scale, boxes)
        assert 1 <= n <= min(3, boxes)
        column = (width - 44 * scale) / n - (pictures.GAP * scale if n > 1 else 0)
        assert side <= column, (width, n, side, column)  # it fits
        assert side >= 0.9 * min(column, cap), (width, n, side, column)  # and fills it
        if n < min(3, boxes):  # no more columns would have been better
            assert column < 1.8 * pictures.COLUMN * scale, (width, n, column)
        assert n == 1 or column >= 0.6 * pictures.COLUMN * scale, (width, n, column)  # still readable


def test_name_click_toggles_details_and_refresh_has_a_shortcut(addon):
    runtime = addon
    tick_until(runtime, lambda: item("comfyui") is not None)
    assert not item("comfyui").show_details
    assert bpy.ops.movie_director.toggle_details(service="comfyui") == {"FINISHED"}
    assert item("comfyui").show_details
    assert bpy.ops.movie_director.toggle_details(service="comfyui") == {"FINISHED"}
    assert not item("comfyui").show_details

    kc = bpy.context.window_manager.keyconfigs.addon
    def ours():
        return [(km.name, kmi.type) for km in kc.keymaps for kmi in km.keymap_items
                if kmi.idname == "movie_director.refresh"]
    assert ("3D View Generic", "F5") in ours()
    _disable()
    assert ours() == []
    _enable()
    assert len(ours()) == 3


def test_operators_read_clearly_in_search(addon):
    from blender_ui import operators
    for cls in operators.classes:
        if "INTERNAL" in getattr(cls, "bl_options", set()):
            continue
        words = cls.bl_label.split()
        assert len(words) >= 2 and all(w[0].isupper() or w in ("to", "of") for w in words), cls.bl_label
        assert "`" not in (cls.__doc__ or "")


NO_NUMPY = r'''
import sys
import bpy, addon_utils  # (the bpy module itself needs numpy; Debian's Blender does not)
sys.modules["numpy"] = None  # from here on, as in a Blender whose Python has no numpy
assert addon_utils.enable("blender_ui", default_set=True, handle_error=None) is not None
from blender_ui import pictures, runtime
runtime.tick()
assert pictures.MISSING and "numpy" in pictures.MISSING, pictures.MISSING
assert pictures.state_icon_args("connected") == {"icon": "CHECKMARK"}
addon_utils.disable("blender_ui", default_set=True, handle_error=None)
print("registered without numpy")
'''


def test_without_numpy_the_add_on_still_works_and_says_why(tmp_path):
    import subprocess
    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", NO_NUMPY], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "registered without numpy" in done.stdout, done.stdout + done.stderr[-2000:]


def test_find_backends_runs_discover_as_a_child_polled_from_the_timer(addon):
    """Contract C5: `python -m aggregator discover --json` with the monitor's interpreter and
    environment; the operator returns at once and the timer collects the answer."""
    import importlib.util

    from blender_ui import discovery
    runtime = addon
    prefs().monitor_python = sys.executable
    found = runtime.RT.discovery
    assert bpy.ops.movie_director.find_backends() == {"FINISHED"}
    assert found.state == discovery.RUNNING  # it returned before the child did: never blocks
    tick_until(runtime, lambda: found.state in (discovery.DONE, discovery.FAILED), timeout=90)
    if importlib.util.find_spec("probes.discover") is None:
        # Until probes/discover.py exists the panel says so, in words.
        assert found.state == discovery.FAILED and "discover is not available" in found.error, found.error
    else:
        assert found.state == discovery.DONE and not found.error, found.error
        assert found.scanned > 0 and isinstance(found.found, list)
    assert found.proc is None  # collected, not left behind


def test_discover_reply_is_bounded_and_errors_read_as_words():
    from blender_ui import discovery
    reply, error = discovery.parse('{"found": [{"kind": "comfyui", "service": "comfyui", "url": "http://127.0.0.1:8188",'
                                   ' "title": "ComfyUI", "version": "0.3.64", "detail": "' + "x" * 5000 + '"}],'
                                   ' "scanned": 24, "written": null, "error": null}', "", 0)
    assert error == "" and reply["scanned"] == 24 and len(reply["found"][0]["detail"]) == discovery.MAX_TEXT
    assert discovery.line(reply["found"][0]) == "ComfyUI 0.3.64 at http://127.0.0.1:8188 (for comfyui)"
    reply, error = discovery.parse("", "Traceback...\nmd-health: discover is not available here", 2)
    assert reply is None and error == "Find Backends failed: md-health: discover is not available here"


def test_local_auth_the_add_on_of_the_same_user_connects_another_users_does_not(endpoints, procs, monkeypatch,
                                                                                 tmp_path):
    """`md-health auth init` (docs/security.md): the add-on finds the user's keys the way the
    probes and the CLI do (the config folder), so it sees the monitor; an add-on of another
    user (another config folder, no keys) completes no handshake and shows the monitor offline."""
    import os
    import subprocess

    from bus import security

    monkeypatch.delenv(security.ENV_DIR, raising=False)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for folder in (mine, theirs):
        folder.mkdir()
        (folder / "config.toml").write_text("", encoding="utf-8")
    me = {"MD_HEALTH_CONFIG": str(mine / "config.toml")}
    done = subprocess.run([sys.executable, "-m", "aggregator", "auth", "init"], capture_output=True, text=True,
                          env={**os.environ, **me}, timeout=60)
    assert done.returncode == 0, done.stderr
    with FakeComfyUI() as fake:
        procs.aggregator(env=me)
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5", env=me)

        monkeypatch.setenv("MD_HEALTH_CONFIG", str(theirs / "config.toml"))
        runtime = _enable()
        try:
            use_endpoints(endpoints)
            deadline = time.monotonic() + 5.0  # an absence: 5 heartbeats' time, and never online in it
            while time.monotonic() < deadline:
                runtime.tick()
                assert not state().online, "an add-on without the user's keys reached the monitor"
                time.sleep(0.05)
        finally:
            _disable()

        monkeypatch.setenv("MD_HEALTH_CONFIG", str(mine / "config.toml"))
        runtime = _enable()
        try:
            use_endpoints(endpoints)
            tick_until(runtime, lambda: item("comfyui") and item("comfyui").state == "connected", timeout=30)
            assert state().online
        finally:
            _disable()
