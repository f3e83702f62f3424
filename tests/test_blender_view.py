"""What the add-on's panels show, computed without Blender: the traffic-light rule, the
"—" for unknown values, and the chart pictures (pure Python, checked pixel by pixel)."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The add-on's bpy-free modules, imported as a package without running its __init__
# (which needs bpy): a bare package object whose path is the add-on folder.
_PKG = types.ModuleType("md_addon_pure")
_PKG.__path__ = [str(ROOT / "blender_ui")]
sys.modules.setdefault("md_addon_pure", _PKG)


def _load(name):
    return importlib.import_module(f"md_addon_pure.{name}")


view = _load("view")
charts = _load("charts")


@pytest.mark.parametrize("rows, light", [
    ([("ComfyUI", "connected", True), ("RVC", "connected", False)], "GREEN"),
    ([("ComfyUI", "connected", True), ("RVC", "disconnected", False)], "YELLOW"),
    ([("ComfyUI", "connected", True), ("RVC", "connecting", False)], "YELLOW"),
    ([("ComfyUI", "error", True), ("RVC", "connected", False)], "RED"),
    ([("ComfyUI", "unknown", True)], "RED"),  # a dead probe is never "up"
    ([("ComfyUI", "missing", True)], "RED"),  # required but not monitored
    ([("ComfyUI", "connected", True), ("Wan2GP", "missing", False)], "GREEN"),  # optional, not monitored
])
def test_traffic_light_rule(rows, light):
    got, reason = view.overall(rows, online=True)
    assert got == light
    if light != "GREEN":
        assert any(label in reason for label, state, _ in rows if state != "connected")


def test_offline_beats_everything():
    assert view.overall([("ComfyUI", "connected", True)], online=False)[0] == "OFFLINE"
    assert view.state_of({"state": "connected"}, online=False) == "offline"
    assert view.state_of(None, online=True) == "missing"
    assert view.state_of({"state": "weird"}, online=True) == "unknown"


def test_required_preference_overrides_the_monitor():
    assert view.is_required("rvc", {"required": False}, "REQUIRED") is True
    assert view.is_required("rvc", {"required": True}, "OPTIONAL") is False
    assert view.is_required("rvc", {"required": True}, "AUTO") is True
    assert view.is_required("rvc", None, "AUTO") is False


def _nb(text):
    return text.replace(" ", view.NB)


def test_unknown_values_show_a_dash_never_zero():
    assert view.ms(None) == view.pct(None) == view.count(None) == view.size(None) == view.money(None) == "—"
    assert view.ms(float("nan")) == "—" and view.ms(True) == "—"
    assert view.ms(12.4) == _nb("12 ms") and view.ms(1500) == _nb("1.50 s")
    assert view.pct(0.9712) == _nb("97.1 %") and view.count(0) == "0"
    assert view.queue_text({"details": {"queue_depth": None}}) == "—"
    assert view.resources_text({"details": {}}) == "—"
    assert view.stats_for({"stats": {"p95_ms": 3}}, "1h") == {}  # no 1 h window from an older aggregator
    assert view.stats_for({"stats": {"p95_ms": 3}}, "5m") == {"p95_ms": 3}
    assert view.uptime_for({"uptime": {"24h": 0.5}}, "24h") == 0.5
    assert view.ago(None, 100) == "never" and view.ago(97.2, 100) == _nb("2 s") + " ago"
    assert view.ago(400, 1000) == _nb("10 min") + " ago"


def test_llm_box_from_the_contract_shape():
    record = {"details": {"active_model": "gpt-4o-mini", "providers": {
        "openai": {"configured": True, "state": "valid", "model_count": 3, "models": ["a", "b", "c"]},
        "anthropic": {"configured": False, "state": "not_configured", "model_count": None, "models": []}}}}
    llm = view.llm_view(record)
    assert llm["configured"] and llm["model_count"] == 3 and llm["models"] == ["a", "b", "c"]
    assert llm["active_model"] == "gpt-4o-mini"
    assert view.llm_view(record, "claude-x")["active_model"] == "claude-x"  # the preference wins
    assert not view.llm_view({"details": {"providers": {}}})["configured"]
    # A loading provider says why; a spent limit is trouble the artist must act on.
    states = view.llm_view({"details": {"providers": {
        "llamacpp": {"configured": True, "state": "loading", "readiness_reason": "Loading model"},
        "anthropic": {"configured": True, "state": "spend_limit", "error": "spend limit reached"}}}})["providers"]
    assert states == [("anthropic", "spend_limit", "spend limit reached"), ("llamacpp", "loading", "Loading model")]
    assert "spend_limit" in view.PROVIDER_TROUBLE and "loading" not in view.PROVIDER_TROUBLE
    usage = view.llm_usage({"usage": {"total_tokens": 30, "cost_usd": 0.01, "by_model": {
        "a": {"tokens_in": 10, "tokens_out": 20, "requests": 1, "cost_usd": 0.01, "latency_p50_ms": 300}}}})
    assert usage["total_tokens"] == 30 and usage["models"][0][:2] == ("a", 30)


def _picture(px, size):
    return px.reshape(size, size, 4)[::-1]  # rows top-down, as on screen


def _has(a, colour, tol=0.02):
    return (abs(a[..., :3] - colour[:3]) < tol).all(axis=-1)


def test_response_chart_is_one_labelled_picture_with_failures_on_the_time_axis():
    size, now = 240, 10_000.0
    t = [now - 300 + k for k in range(300)]
    p50 = [40.0] * 300
    p95 = [120.0] * 300
    ok = [0.5 if 100 <= k < 110 else 1.0 for k in range(300)]
    a = _picture(charts.response_chart(t, p50, p95, ok, (now - 300, now), size, 1.0, limit=500.0), size)
    assert a.shape == (size, size, 4) and a.dtype.name == "float32"
    orange, blue, red = _has(a, charts.P95), _has(a, charts.P50), _has(a, charts.FAIL)
    # p95 above p50, both spanning most of the width: one seamless line each, not tiles.
    assert orange.any(axis=0).sum() > size * 0.7 and blue.any(axis=0).sum() > size * 0.7
    assert orange.nonzero()[0].mean() < blue.nonzero()[0].mean()
    # Failures (10 of 300 s, a third of the way in) are red on the same time axis.
    red_cols = red.any(axis=0).nonzero()[0]
    assert len(red_cols) and abs(red_cols.mean() / size - 0.40) < 0.12, red_cols
    # Axis values and the time span are written on it (grey text pixels left and at the bottom).
    text = _has(a, charts.AXIS_TEXT, tol=0.05)
    assert text[:, :30].sum() > 30 and text[-20:, :].sum() > 30
    # The threshold (500 ms) is far above the data: the axis is not stretched to it.
    assert not _has(a, charts.LIMIT).any()


def test_chart_axis_follows_the_data_and_shows_a_near_threshold():
    top, step = charts.nice_top(430)
    assert top >= 430 and top / step <= 5 and charts.ms_label(1500) == "1.5 s" and charts.ms_label(250) == "250 ms"
    size, now = 200, 1000.0
    t = [now - 60 + k for k in range(60)]
    a = _picture(charts.response_chart(t, [300.0] * 60, [450.0] * 60, [1.0] * 60, (now - 300, now), size, limit=500.0),
                 size)
    assert _has(a, charts.LIMIT).any()                       # 500 ms is near 450: shown, dashed
    assert not _has(a, charts.P95)[:, : size // 2].any()     # nothing before the data began


def test_compare_chart_has_one_strip_per_service():
    size, now = 300, 1000.0
    t = [now - 300 + k for k in range(0, 300, 10)]
    rows = [(name, t, [10.0 * (i + 1)] * len(t), [1.0] * len(t)) for i, name in enumerate(["A", "B", "C"])]
    a = _picture(charts.compare_chart(rows, (now - 300, now), size), size)
    ys = _has(a, charts.P95).any(axis=1).nonzero()[0]
    bands = {int(y // ((size - 20) / 3)) for y in ys}
    assert bands == {0, 1, 2}


def test_state_icons_differ_in_shape_not_only_colour():
    shapes = {k: charts.state_icon(k, charts.GREY, 32).reshape(32, 32, 4) for k in
              ("connected", "connecting", "disconnected", "error", "loading", "sleeping", "degraded", "unknown")}
    ink = {k: (a[..., 0] < 0.3) & (a[..., 3] > 0.5) for k, a in shapes.items()}  # the dark symbol
    names = list(ink)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (ink[a] ^ ink[b]).sum() > 20, (a, b)


def test_texts_lose_markup_and_wrap_between_words():
    assert view.plain("Start it with `python main.py`") == "Start it with python main.py"
    lines = view.wrap("gradio 5.29, refresh_gallery, images, workflows, queue", 16)
    assert all(len(line) <= 16 for line in lines) and " ".join(lines).replace("  ", " ").startswith("gradio 5.29,")
    assert not any(line.endswith("refr") for line in lines)
    path = view.wrap("/root/.config/blender/5.0/config/movie_director_health/monitor.log", 20)
    assert all(len(line) <= 20 for line in path) and "".join(path).endswith("monitor.log")
    assert view.overall_short("RED", [("disconnected", True), ("connected", False)]) == "AI backends: 1 down"
    assert view.overall_short("GREEN", [("connected", True), ("missing", False)]) == "AI backends: all up"
    assert view.job_time_text({"job_time": {"p50_ms": 1200, "p95_ms": 3000, "count": 4}}) == \
        f"p50 {view.ms(1200)}, p95 {view.ms(3000)} (4 jobs)"
    assert view.wrap(f"RAM {view.size(1.3 * 2 ** 30)} of {view.size(23.5 * 2 ** 30)}", 12) == \
        (f"RAM {view.size(1.3 * 2 ** 30)}", f"of {view.size(23.5 * 2 ** 30)}")  # never "1.3" / "GB"


def test_thresholds_are_set_in_the_config_without_touching_the_rest():
    thresholds = _load("thresholds")
    text = "# mine\n[services.comfyui]\nurl = \"x\"\n\n[alerts.default]\np95_ms = 900 # old\nraise_after_s = 30\n"
    out = thresholds.set_keys(text, {"p95_ms": 500.0, "success_pct": 92.5})
    assert "# mine\n[services.comfyui]\nurl = \"x\"" in out and "raise_after_s = 30" in out
    assert "p95_ms = 500\n" in out and "success_pct = 92.5" in out and "900" not in out
    fresh = thresholds.set_keys("", {"down_s": 60.0})
    assert fresh == "[alerts.default]\ndown_s = 60\n"


def test_local_monitor_state_machine_with_real_processes(tmp_path):
    """stopped -> starting -> running; one child exits -> degraded; start restarts only it;
    stop -> stopping -> stopped. Real child processes (the lifeline keeps them alive)."""
    import time as _time

    from bus import lifeline

    monitor = _load("monitor")
    waiter = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    mon = monitor.LocalMonitor()

    def spawn(args, **kw):
        return lifeline.spawn(waiter, **kw)

    assert mon.update(online=False) == monitor.STOPPED
    assert mon.start(sys.executable, {}, str(tmp_path), tmp_path / "log", spawn) == ["aggregator", "probes"]
    assert mon.state == monitor.STARTING == mon.update(online=False)
    assert mon.update(online=True) == monitor.RUNNING
    agg = mon.children["aggregator"]
    agg.kill()
    agg.wait(20)
    assert mon.update(online=True) == monitor.DEGRADED
    assert "aggregator exited" in mon.note and mon.missing() == ["aggregator"]
    assert mon.start(sys.executable, {}, str(tmp_path), tmp_path / "log", spawn) == ["aggregator"]
    assert mon.update(online=True) == monitor.RUNNING
    assert mon.stop(wait=False) == 2 and mon.state == monitor.STOPPING
    deadline = _time.monotonic() + 20
    while mon.update(online=False) != monitor.STOPPED and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert mon.state == monitor.STOPPED


# -- issue 13: alive but not ready, queue running and waiting, every GPU, the history shape ----
def test_new_states_have_words_icons_and_colours():
    pictures_src = (ROOT / "blender_ui" / "pictures.py").read_text()
    for state, words in (("loading", "Loading model"), ("sleeping", "Sleeping (wakes on use)"),
                         ("degraded", "Degraded")):
        icon, shown, tip = view.STATES[state]
        assert shown == words and icon and tip
        assert view.state_of({"state": state}, online=True) == state  # shown as itself, not "unknown"
        assert f'"{state}":' in pictures_src  # a coloured picture of its own
    assert charts.SAGE != charts.GREEN and charts.SAGE != charts.GREY


@pytest.mark.parametrize("rows, light, words", [
    ([("ComfyUI", "sleeping", True)], "GREEN", "All services up"),     # sleeping is healthy: never red
    ([("ComfyUI", "loading", True)], "YELLOW", "Not ready"),           # not ready: yellow, never red
    ([("ComfyUI", "degraded", True)], "YELLOW", "Degraded"),
    ([("ComfyUI", "connected", True), ("RVC", "loading", False)], "YELLOW", "Not ready"),
    ([("ComfyUI", "loading", True), ("RVC", "disconnected", True)], "RED", "Required service down"),
    ([("ComfyUI", "connected", True), ("RVC", "disconnected", False)], "YELLOW", "Optional service down"),
])
def test_overall_light_with_the_new_states(rows, light, words):
    got, reason = view.overall(rows, online=True)
    assert (got, view.overall_words(got, reason)) == (light, words), reason


def test_status_bar_words_count_not_ready_apart_from_down():
    assert view.overall_short("YELLOW", [("loading", True), ("sleeping", True)]) == "AI backends: 1 not ready"
    assert view.overall_short("RED", [("disconnected", True), ("loading", False)]) == \
        "AI backends: 1 down, 1 not ready"
    assert view.overall_short("GREEN", [("sleeping", True), ("degraded", False)]) == "AI backends: all up"


def test_queue_running_and_waiting_or_unknown_with_the_reason():
    assert view.queue_text({"details": {"queue_running": 1, "queue_waiting": 3, "queue_depth": 4}}) == \
        "1 running, 3 waiting"
    assert view.queue_text({"details": {"queue_running": None, "queue_waiting": 2}}) == "2 waiting"
    note = "Wan2GP keeps its own task queue inside one `process_tasks` event"
    got = view.queue_text({"details": {"queue_running": None, "queue_waiting": None, "queue_note": note}})
    assert got == "unknown (Wan2GP keeps its own task queue inside one process_tasks event)"
    assert view.queue_text({"details": {"queue_running": None, "queue_waiting": None, "queue_note": note}},
                           reason=False) == "unknown"


def test_every_gpu_is_listed_primary_first():
    gib = 1024 ** 3
    record = {"details": {"devices": [
        {"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
         "vram_total": 24 * gib, "vram_free": 20 * gib},
        {"name": "cuda:1 NVIDIA RTX A4000 : native", "type": "cuda", "index": 1, "vram_total": 16 * gib,
         "vram_free": 16 * gib}]}}
    lines = view.devices_lines(record)
    assert lines == ["GPU 1 (primary): NVIDIA GeForce RTX 4090, VRAM " + _nb("20.0 GB") + " free of " + _nb("24.0 GB"),
                     "GPU 2: NVIDIA RTX A4000, VRAM " + _nb("16.0 GB") + " free of " + _nb("16.0 GB")]
    assert view.devices_lines({"details": {"devices": [{"name": "cpu", "vram_total": 0, "vram_free": 0}]}}) == \
        ["Device 1: cpu, VRAM " + _nb("0 B") + " free of " + _nb("0 B")]


def test_history_reads_t0_and_step_s():
    """Contract C4: one start time per service and the reply's step; gaps are None."""
    history = {"range": "1h", "step_s": 10.0, "services": {"comfyui": {
        "t0": 1000.0, "p50_ms": [5.0, None, 7.0], "p95_ms": [9.0, None, 11.0], "success_rate": [1.0, None, 0.5],
        "up_ratio": [1.0, None, 1.0]}}}
    got = view.history_series(history, "comfyui", "1h")
    assert got["t"] == [1000.0, 1010.0, 1020.0] and got["p95_ms"] == [9.0, None, 11.0]
    assert view.history_series(history, "comfyui", "5m") == {}  # another range's reply
    assert view.history_series(history, "rvc", "1h") == {}
    assert view.history_series({**history, "step_s": 0}, "comfyui", "1h") == {}
    # A chart of it: the gap stays a gap, the points land on their buckets.
    cols = charts.columns(got["t"], got["p95_ms"], (1000.0, 1030.0), 3)
    assert cols[0] == 9.0 and cols[2] == 11.0 and cols[1] != cols[1]  # NaN in the gap


def test_time_in_other_states_shows_only_what_happened():
    # Shape of a window in docs/protocol.md: seconds per state.
    stats = {"up_s": 3000.0, "down_s": 0.0, "degraded_s": 45.2, "loading_s": 720.0, "sleeping_s": 0.4,
             "unknown_s": 12.0}
    assert view.state_time_rows(stats) == [("Degraded", _nb("45 s")), ("Loading", _nb("12 min"))]
    assert view.state_time_rows({"up_s": 300.0, "down_s": 0.0}) == []
    assert view.state_time_rows({"down_s": 3 * 3600.0}) == [("Down", _nb("3.0 h"))]
    assert view.state_time_rows({"loading_s": float("nan"), "down_s": "x"}) == []
    assert view.state_time_rows(None) == []


def test_a_card_holds_every_text_of_both_panels_for_one_record():
    """The timer formats a record once (view.card); a redraw only lays the texts out."""
    record = {"url": "http://127.0.0.1:8188", "capabilities": ["image_generation", "workflows"],
              "windows": {"1h": {"p95_ms": 620.0, "avg_ms": 240.0, "success_rate": 0.97, "down_s": 120}},
              "uptime": {"1h": 0.9876}, "details": {"queue_running": 1, "queue_waiting": 2}}
    card = view.card(record, "1h")
    assert card["p95_ms"] == 620.0 and card["success_rate"] == 0.97  # numbers: thresholds compare at draw time
    assert dict(card["figures"]) == {"p95": _nb("620 ms"), "Average": _nb("240 ms"), "Success": _nb("97.0 %"),
                                     "Uptime": _nb("98.76 %"), "Queue": "1 running, 2 waiting", "Job time": "—",
                                     "Down": _nb("2 min")}
    assert card["compare"] == {"p95": _nb("620 ms"), "success": _nb("97.0 %"), "uptime": _nb("98.8 %"),
                               "uptime_short": _nb("99 %")}
    assert card["capabilities"] == "image generation, workflows" and card["url"] == "URL: http://127.0.0.1:8188"
    assert "Queue: 1 running, 2 waiting" in card["details"] and card["resources"] == ("Resources: —",)
    # Another range of the same record: its own figures; a record from nowhere: dashes, never 0.
    assert dict(view.card(record, "5m")["figures"])["p95"] == "—"
    empty = view.card(None, "5m")
    assert empty["p95_ms"] is None and {v for _, v in empty["figures"]} == {"—"}
    llm = view.card({"details": {"active_model": "m", "providers": {
        "anthropic": {"configured": True, "state": "spend_limit", "error": "`spend` limit", "model_count": 2}}},
        "usage": {"total_tokens": 30, "cost_usd": 0.01, "by_model": {"a": {"tokens_in": 10, "tokens_out": 20}}}},
        "5m")["llm"]
    assert llm["configured"] and llm["active_model"] == "m" and llm["model_count"] == "2"
    assert llm["providers"] == (("anthropic: spend limit (spend limit)", True),)  # markup gone, trouble flagged
    assert llm["usage"] == "Tokens used: 30, cost $0.0100" and llm["usage_models"] == ("  a: 30 tokens, —, —",)


def test_a_series_counts_only_its_finite_numbers_inside_the_range():
    """The charts take a series as numpy floats: gaps (None), NaN, infinities, and values
    that are not numbers (a string or a bool numpy would read as one) are no points."""
    t = [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107, 300.0]
    v = [1.0, None, float("nan"), float("inf"), "2", True, 3, 4.5, 9.0]
    assert charts.enough(t, v, (100.0, 200.0)) == 3  # 100 -> 1.0, 106 -> 3, 107 -> 4.5
    assert charts.enough(t, [1.0] * 9, (100.0, 200.0)) == 8  # 300 is outside
    assert charts.enough(t[:3], v, (0.0, 1e9)) == 1  # the shorter of the two decides
    cols = charts.columns(t, v, (100.0, 110.0), 10)
    assert cols[0] == 1.0 and cols[6] == 3.0 and cols[7] == 4.5 and np.isnan(cols[[1, 2, 3, 4, 5, 8, 9]]).all()
