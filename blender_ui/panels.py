"""The Connection Status panel, its Health Monitoring sub-panel and the Metrics History view,
in the 3D Viewport sidebar, the Properties editor (Scene tab) and the Video Sequencer sidebar.

Drawing only reads: the window manager's mirrored status and the client's dictionaries.
"""
import time

import bpy
from bpy.types import Panel

from . import charts, deps, runtime, view

RT = runtime.RT
# Icons come and go between versions (INTERNET_OFFLINE is not in 3.4): fall back, never fail.
ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
FALLBACK = {"INTERNET_OFFLINE": "UNLINKED", "INTERNET": "LINKED"}


def _i(name):
    return name if name in ICONS else (FALLBACK.get(name) if FALLBACK.get(name) in ICONS else "DOT")


# -- where the panels live: one mixin per editor (Blender's own UI code does the same) -----------
class View3DSidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Movie Director"


class SequencerSidebar:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Movie Director"


class PropertiesScene:
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "scene"


def _indicator(layout, kind, text, icon, service="", tip="", emboss=False):
    op = layout.operator("movie_director.indicator", text=text, icon=_i(icon), emboss=emboss)
    op.kind, op.service, op.text = kind, service, tip
    return op


def _bar(layout, frac, text, level="none", tip=""):
    """A ten-cell bar of coloured squares (colour from the threshold level) and its value in
    words, whose tooltip explains it. Built from icons: the same in Blender 3.4 and 5.0."""
    row = layout.row(align=True)
    row.alignment = "LEFT"
    filled = max(1 if level != "none" else 0, round(view.fraction(frac) * 10))
    colour = view.LEVEL_ICON[level] if level != "none" else "SEQUENCE_COLOR_09"
    for cell in range(10):
        row.label(text="", icon=_i(colour if cell < filled else "SEQUENCE_COLOR_09"))
    _indicator(row, "metric", text, "NONE", tip=tip or text)


def _chars(context) -> int:
    """About how many characters fit on a line of this region (for wrapping long texts)."""
    scale = context.preferences.system.ui_scale
    return max(16, int(context.region.width / (7.0 * scale)) - 4)


def _narrow(context) -> bool:
    return context.region.width < 420 * context.preferences.system.ui_scale


def _wrapped(layout, text, chars, icon="NONE"):
    """Blender labels do not wrap: split long texts (errors, reasons) over several lines."""
    import textwrap

    col = layout.column(align=True)
    for k, line in enumerate(textwrap.wrap(text, chars) or [""]):
        col.label(text=line, icon=_i(icon) if k == 0 and icon != "NONE" else "NONE")
    return col


def _picture(layout, icons, scale):
    """A chart: its square tiles side by side."""
    row = layout.row(align=True)
    row.alignment = "LEFT"
    for icon in icons:
        row.template_icon(icon_value=icon, scale=scale)


# -- Connection Status -----------------------------------------------------------------------------
class ConnectionStatus:
    bl_label = "Backend Services"

    def draw_header(self, context):
        state = getattr(context.window_manager, runtime.STATE)
        self.layout.label(text="", icon=_i(view.OVERALL.get(state.overall, view.OVERALL["OFFLINE"])[0]))

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, runtime.STATE)
        if deps.MISSING:
            col = layout.column()
            col.alert = True
            col.label(text="Missing Python packages", icon=_i("ERROR"))
            col.label(text=deps.MISSING)
            return
        client = RT.client
        records = client.services if client else {}

        icon, words = view.OVERALL.get(state.overall, view.OVERALL["OFFLINE"])
        row = layout.row(align=True)
        row.scale_y = 1.4
        _indicator(row, "overall", words, icon, emboss=True)
        sub = row.row(align=True)
        sub.enabled = state.online
        sub.operator("movie_director.refresh", text="", icon=_i("FILE_REFRESH")).service = ""
        if state.overall_reason and state.overall not in ("GREEN", "OFFLINE"):
            _wrapped(layout, state.overall_reason, _chars(context))

        if not state.online:
            box = layout.box()
            col = box.column()
            col.alert = True
            col.label(text="Monitor offline", icon=_i("INTERNET_OFFLINE"))
            ep = RT.endpoints.snapshots if RT.endpoints else "?"
            box.label(text=f"No heartbeat at {ep}. Reconnects by itself.")
            if not state.monitor_running:
                box.operator("movie_director.start_monitor", icon=_i("PLAY"))
            else:
                box.label(text="Local monitor starting ...", icon=_i("TIME"))

        now = time.time()
        traced = {}
        for item in state.services:
            self.draw_service(context, layout, item, records.get(item.name), now)
            traced[item.name] = item.state
        self.draw_llm(layout, state, records.get(view.LLM))

        footer = layout.row(align=True)
        if state.monitor_running:
            footer.operator("movie_director.stop_monitor", icon=_i("PAUSE"))
        elif state.online:
            footer.label(text="Monitor running outside Blender", icon=_i("LINKED"))
        if state.message:
            _wrapped(layout, state.message, _chars(context), "INFO")
        runtime.trace("connection_status", {"overall": state.overall, "online": state.online, "services": traced,
                                            "space": self.bl_space_type})

    def draw_service(self, context, layout, item, record, now):
        chars = _chars(context)
        box = layout.box()
        icon, words, _ = view.STATES.get(item.state, view.STATES["unknown"])
        badge = ("Required", "LOCKED") if item.required else ("Optional", "UNLOCKED")
        alert = item.state in ("disconnected", "error") or (item.required and item.state != "connected")
        if _narrow(context):  # a sidebar: name and badge icon on one line, the state below
            row = box.row(align=True)
            row.prop(item, "show_details", text="", emboss=False,
                     icon=_i("TRIA_DOWN" if item.show_details else "TRIA_RIGHT"))
            row.label(text=item.label)
            _indicator(row, "badge", "", badge[1], item.name)
            state_row = box.row(align=True)
        else:
            split = box.split(factor=0.4)
            row = split.row(align=True)
            row.prop(item, "show_details", text="", emboss=False,
                     icon=_i("TRIA_DOWN" if item.show_details else "TRIA_RIGHT"))
            row.label(text=item.label)
            state_row = split.row(align=True)
        sub = state_row.row(align=True)
        sub.alert = alert
        _indicator(sub, "state", words, icon, item.name, emboss=True)
        if not _narrow(context):
            _indicator(state_row, "badge", badge[0], badge[1], item.name, emboss=True)
        line = box.row()
        line.alignment = "LEFT"
        _indicator(line, "last_check", f"last check {view.ago((record or {}).get('last_check'), now)}", "TIME", item.name)
        if item.state == "connected":
            box.label(text=f"{item.version or view.DASH} · {view.capabilities_text(record)}", icon=_i("INFO"))
        if item.show_details:
            col = box.column(align=True)
            col.label(text=f"URL: {(record or {}).get('url') or view.DASH}")
            col.label(text=f"Version: {item.version or view.DASH}")
            for line_text in view.devices_lines(record) or [f"Devices: {view.DASH}"]:
                _wrapped(col, line_text, chars)
            col.label(text=f"Queue: {view.queue_text(record)}")
            _wrapped(col, f"Resources: {view.resources_text(record)}", chars)
            if item.error and item.state != "offline":  # an old error is not news while offline
                err = col.column(align=True)
                err.alert = True
                _wrapped(err, item.error, chars, "ERROR")
                row = col.row()
                row.alignment = "LEFT"
                row.operator("movie_director.copy_error", text="Copy Error", icon=_i("COPYDOWN")).service = item.name

    def draw_llm(self, layout, state, record):
        p = runtime.prefs()
        llm = view.llm_view(record, p.active_model if p else "")
        box = layout.box()
        row = box.row(align=True)
        row.prop(state, "show_llm_details", text="", emboss=False,
                 icon=_i("TRIA_DOWN" if state.show_llm_details else "TRIA_RIGHT"))
        row.label(text="Language Models")
        if not state.online or record is None:
            icon, words, _ = view.STATES[view.state_of(record, state.online)]
            _indicator(row, "llm", words, icon, tip="No language-model probe reports to the monitor")
        elif llm["configured"]:
            _indicator(row, "llm", "Configured", "CHECKMARK", tip="At least one provider has a key")
        else:
            sub = row.row()
            sub.alert = True
            _indicator(sub, "llm", "Not Configured", "CANCEL", tip="No provider has an API key")
        if record is not None and not llm["configured"]:
            col = box.column(align=True)
            col.label(text="Set one of these environment variables:", icon=_i("INFO"))
            for name in view.LLM_ENV_HINT:
                col.label(text=f"    {name}")
        if llm["configured"] or state.show_llm_details:
            col = box.column(align=True)
            col.label(text=f"Active model: {llm['active_model']}")
            col.label(text=f"Models available: {view.count(llm['model_count'])}")
            if state.show_llm_details:
                for name, pstate, error in llm["providers"]:
                    r = col.row()
                    r.alert = pstate in ("invalid", "unreachable")
                    r.label(text=f"{name}: {pstate.replace('_', ' ')}" + (f" ({error})" if error else ""))
        if llm["models"]:
            row = box.row()
            row.prop(state, "show_models", emboss=False, icon=_i("TRIA_DOWN" if state.show_models else "TRIA_RIGHT"),
                     text=f"Models ({len(llm['models'])})")
            if state.show_models:
                col = box.column(align=True)
                for model in llm["models"]:
                    col.label(text=model)


# -- Health Monitoring -------------------------------------------------------------------------------
def _trend_icons(name, rng, series, big=False):
    """(response-time tiles, success-rate tiles) for one service, re-rendered only on change."""
    h = 64 if big else 40
    w = h * (6 if big else 4)
    t = series.get("t") or []
    seconds = view.RANGE_SECONDS[rng]
    now = time.time()
    span = (now - seconds, now)
    # Re-render when data arrives, or when the time axis has moved by about one column.
    sig = (rng, len(t), t[-1] if t else None, int(now / max(1.0, seconds / w)))
    p95, p50, ok = series.get("p95_ms") or [], series.get("p50_ms") or [], series.get("success_rate") or []
    trend = runtime.chart_icons(f"{name}.trend.{h}", sig, (w, h), lambda: charts.line_chart(
        [(p95, charts.P95), (p50, charts.P50)], w, h, limit=view.FAST_MS, rates=ok, times=t, span=span))
    rate = runtime.chart_icons(f"{name}.rate.{h}", sig, (w, h), lambda: charts.rate_chart(ok, w, h, t, span))
    return trend, rate


def service_series(name, rng):
    """The aggregator's history for the range, else the add-on's own recent samples (5 m)."""
    series = view.history_series(RT.client.history if RT.client else {}, name, rng)
    if series or rng != "5m":
        return series
    samples = list(RT.samples.get(name) or ())
    return {"t": [s[0] for s in samples], "p50_ms": [s[1] for s in samples], "p95_ms": [s[2] for s in samples],
            "success_rate": [s[3] for s in samples]}


class HealthDashboard:
    bl_label = "Health Monitoring"

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, runtime.STATE)
        rng = state.metrics_range
        layout.row().prop(state, "metrics_range", expand=True)
        if RT.dashboard_drawn < time.monotonic() - 3.0:
            RT.next_history = 0.0  # just opened: fetch the history now
        RT.dashboard_drawn = time.monotonic()
        client = RT.client
        if client is None or not state.online:
            layout.label(text="Monitor offline: no figures", icon=_i("INTERNET_OFFLINE"))
            return
        for alert in client.alerts:
            col = layout.column()
            col.alert = True
            col.label(text=str(alert.get("message") or alert.get("name")), icon=_i("ERROR"))

        shown = {}
        idle = [item.label for item in state.services if item.state != "connected"]
        if idle:
            layout.label(text=f"No live figures (not connected): {', '.join(idle)}", icon=_i("INFO"))
        for item in state.services:
            record = client.services.get(item.name)
            if record is None or item.state != "connected":
                continue
            stats = view.stats_for(record, rng)
            box = layout.box()
            icon, words, _ = view.STATES.get(item.state, view.STATES["unknown"])
            box.label(text=f"{item.label} · {words}", icon=_i(icon))
            p95 = stats.get("p95_ms")
            lvl = view.level(p95)
            _bar(box, (p95 or 0) / view.SLOW_MS, f"avg {view.ms(stats.get('avg_ms'))} · p95 {view.ms(p95)}", lvl,
                 f"Response time over {rng}: average and 95th percentile ({view.count(stats.get('count'))} "
                 f"requests). Green under {view.ms(view.FAST_MS)}, yellow under {view.ms(view.SLOW_MS)}, red above; "
                 f"the bar is full at {view.ms(view.SLOW_MS)}")
            rate = stats.get("success_rate")
            _bar(box, rate or 0.0, f"success {view.pct(rate)}",
                 "none" if rate is None else ("good" if rate >= 0.99 else "warn" if rate >= 0.9 else "bad"),
                 f"Share of checks that succeeded over {rng}. Green from 99 %, yellow from 90 %, red below")
            col = box.column(align=True)
            up = col.row()
            up.alignment = "LEFT"
            _indicator(up, "metric", f"Uptime ({rng}): {view.pct(view.uptime_for(record, rng), 2)}", "NONE",
                       tip=f"Share of the last {rng} the service was connected; time its probe was silent "
                           "counts as unknown, not as up")
            col.label(text=f"Queue: {view.queue_text(record)}")
            _wrapped(col, f"Resources: {view.resources_text(record)}", _chars(context))
            trend, rate_tiles = _trend_icons(item.name, rng, service_series(item.name, rng))
            if trend:
                box.label(text="Trend: orange p95, blue p50, dashed 500 ms; bottom strip green ok, red failed")
                _picture(box, trend, 2.4)
            shown[item.name] = {"p95": view.ms(p95), "success": view.pct(rate)}

        self.draw_llm_usage(layout, client.services.get(view.LLM))
        self.draw_compare(layout, state, client, rng)
        row = layout.row()
        op = row.operator("movie_director.export_metrics", icon=_i("EXPORT"))
        op.range = rng if rng != "5m" else "1h"
        runtime.trace("health_dashboard", {"range": rng, "services": shown, "alerts": len(client.alerts)})

    def draw_llm_usage(self, layout, record):
        if record is None:
            return
        usage = view.llm_usage(record)
        p = runtime.prefs()
        llm = view.llm_view(record, p.active_model if p else "")
        box = layout.box()
        box.label(text="Language Models", icon=_i("TEXT"))
        col = box.column(align=True)
        col.label(text=f"Active model: {llm['active_model']}")
        col.label(text=f"Tokens used: {view.count(usage['total_tokens'])} · cost {view.money(usage['cost_usd'])}")
        for model, tokens, latency, cost, _req in usage["models"]:
            col.label(text=f"  {model}: {view.count(tokens)} tokens, {view.ms(latency)}, {view.money(cost)}")

    def draw_compare(self, layout, state, client, rng):
        box = layout.box()
        row = box.row()
        row.label(text="Compare", icon=_i("SORTSIZE"))
        row.prop(state, "compare_metric", expand=True)
        grid = box.grid_flow(row_major=True, columns=4, even_columns=True, align=True)
        for head in ("Service", "p95", "Success", "Uptime"):
            grid.label(text=head)
        bars = []
        colours = (charts.P95, charts.P50, charts.OK, charts.FAIL, charts.LIMIT)
        for i, item in enumerate(state.services):
            record = client.services.get(item.name)
            if record is None:
                continue
            stats = view.stats_for(record, rng)
            up = view.uptime_for(record, rng)
            grid.label(text=item.label)
            grid.label(text=view.ms(stats.get("p95_ms")))
            grid.label(text=view.pct(stats.get("success_rate")))
            grid.label(text=view.pct(up))
            value = {"p95": stats.get("p95_ms"), "success": stats.get("success_rate"), "uptime": up}[state.compare_metric]
            bars.append((value, colours[i % len(colours)]))
        if bars:
            sig = (state.compare_metric, tuple(v for v, _ in bars))
            limit = view.FAST_MS if state.compare_metric == "p95" else None
            icons = runtime.chart_icons(f"compare.{len(bars)}", sig, (160, 40),
                                        lambda: charts.compare_chart(bars, 160, 40, limit))
            _picture(box, icons, 2.4)


class MetricsHistory:
    bl_label = "Metrics History"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, runtime.STATE)
        if RT.client is None or not state.online:
            layout.label(text="Monitor offline", icon=_i("INTERNET_OFFLINE"))
            return
        rng = state.metrics_range
        layout.row().prop(state, "metrics_range", expand=True)
        for item in state.services:
            if item.name not in RT.client.services:
                continue
            series = service_series(item.name, rng)
            layout.label(text=f"{item.label}: {len(series.get('t') or [])} points over {rng}")
            trend, rate = _trend_icons(item.name, rng, series, big=True)
            layout.label(text="Response time (orange p95, blue p50)")
            _picture(layout, trend, 4.0)
            layout.label(text="Success rate (green share ok, red share failed)")
            _picture(layout, rate, 2.0)


# -- the classes: the same three panels in each of the three editors -------------------------------
def _panels(editor, suffix, open_dashboard):
    """Panel ids must be unique per class: the 3D Viewport keeps the plain ids, the other
    editors add a suffix. The Properties editor has room, so its sub-panels start open."""
    status_id = f"MOVIE_DIRECTOR_PT_connection_status{suffix}"
    dash_id = f"MOVIE_DIRECTOR_PT_health_dashboard{suffix}"
    status = type(status_id, (editor, ConnectionStatus, Panel), {"bl_idname": status_id})
    dash = type(dash_id, (editor, HealthDashboard, Panel), {
        "bl_idname": dash_id, "bl_parent_id": status_id,
        "bl_options": set() if open_dashboard else {"DEFAULT_CLOSED"}})
    hist_id = f"MOVIE_DIRECTOR_PT_metrics_history{suffix}"
    hist = type(hist_id, (editor, MetricsHistory, Panel), {
        "bl_idname": hist_id, "bl_parent_id": dash_id,
        "bl_options": set() if open_dashboard else {"DEFAULT_CLOSED"}})
    return status, dash, hist


classes = (
    *_panels(View3DSidebar, "", False),
    *_panels(SequencerSidebar, "_sequencer", False),
    *_panels(PropertiesScene, "_properties", True),
)

# Registers in order and unregisters in reverse, as Blender's own modules do.
register, unregister = bpy.utils.register_classes_factory(classes)
