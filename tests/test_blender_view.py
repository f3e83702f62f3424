"""What the add-on's panels show, computed without Blender: the traffic-light rule, the
"—" for unknown values, and the chart pictures (pure Python, checked pixel by pixel)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    """Load a bpy-free module of the add-on without running the add-on's __init__ (which needs bpy)."""
    spec = importlib.util.spec_from_file_location(f"md_addon_{name}", ROOT / "blender_ui" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_unknown_values_show_a_dash_never_zero():
    assert view.ms(None) == view.pct(None) == view.count(None) == view.size(None) == view.money(None) == "—"
    assert view.ms(float("nan")) == "—" and view.ms(True) == "—"
    assert view.ms(12.4) == "12 ms" and view.ms(1500) == "1.50 s"
    assert view.pct(0.9712) == "97.1 %" and view.count(0) == "0"
    assert view.queue_text({"details": {"queue_depth": None}}) == "—"
    assert view.resources_text({"details": {}}) == "—"
    assert view.stats_for({"stats": {"p95_ms": 3}}, "1h") == {}  # no 1 h window from an older aggregator
    assert view.stats_for({"stats": {"p95_ms": 3}}, "5m") == {"p95_ms": 3}
    assert view.uptime_for({"uptime": {"24h": 0.5}}, "24h") == 0.5
    assert view.ago(None, 100) == "never" and view.ago(97.2, 100) == "2 s ago" and view.ago(400, 1000) == "10 min ago"


def test_llm_box_from_the_contract_shape():
    record = {"details": {"active_model": "gpt-4o-mini", "providers": {
        "openai": {"configured": True, "state": "valid", "model_count": 3, "models": ["a", "b", "c"]},
        "anthropic": {"configured": False, "state": "not_configured", "model_count": None, "models": []}}}}
    llm = view.llm_view(record)
    assert llm["configured"] and llm["model_count"] == 3 and llm["models"] == ["a", "b", "c"]
    assert llm["active_model"] == "gpt-4o-mini"
    assert view.llm_view(record, "claude-x")["active_model"] == "claude-x"  # the preference wins
    assert not view.llm_view({"details": {"providers": {}}})["configured"]
    usage = view.llm_usage({"usage": {"total_tokens": 30, "cost_usd": 0.01, "by_model": {
        "a": {"tokens_in": 10, "tokens_out": 20, "requests": 1, "cost_usd": 0.01, "latency_p50_ms": 300}}}})
    assert usage["total_tokens"] == 30 and usage["models"][0][:2] == ("a", 30)


def test_line_chart_places_points_in_time_and_draws_the_limit():
    w, h = 40, 20
    t1 = 1000.0
    px = charts.line_chart([([10.0, 10.0], charts.P95)], w, h, limit=11.0, times=[t1 - 1, t1], span=(t1 - 40, t1))
    cv = charts.Canvas(w, h)
    cv.px = px
    column = lambda x: [cv.pixel(x, y) for y in range(h)]  # noqa: E731
    assert charts.P95 in column(w - 1)            # the newest point sits at the right edge
    assert charts.P95 not in column(0)            # nothing old: the left stays empty
    assert any(charts.LIMIT in column(x) for x in range(w))  # 11 ms limit is within range
    assert len(px) == w * h * 4


def test_rate_chart_and_tiles():
    px = charts.rate_chart([1.0, 0.5], 4, 10)
    cv = charts.Canvas(4, 10)
    cv.px = px
    assert cv.pixel(0, 0) == charts.OK and cv.pixel(0, 9) == charts.OK     # 100 % ok: all green
    assert cv.pixel(3, 0) == charts.OK and cv.pixel(3, 9) == charts.FAIL   # 50 %: half red on top
    tiles = charts.tiles(charts.line_chart([([1, 2, 3], charts.P50)], 30, 10), 30, 10)
    assert len(tiles) == 3 and all(len(t) == 10 * 10 * 4 for t in tiles)
