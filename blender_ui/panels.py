"""The Connection Status panel, its Health Monitoring sub-panel and the Metrics History view,
in the 3D Viewport sidebar, the Properties editor (Scene tab) and the Video Sequencer sidebar.

`draw()` only reads: the window manager's mirrored status, the client's dictionaries and
the pictures the timer rendered (pictures.py). States are text with an icon, never buttons;
colour comes from the state icons and only reinforces the words.
"""
import time

import bpy
from bpy.types import Panel

from . import deps, discovery, instrument, pictures, view
from .state import RT, STATE, prefs

# Icons come and go between versions (INTERNET_OFFLINE is not in 3.4): fall back, never fail.
ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
FALLBACK = {"INTERNET_OFFLINE": "UNLINKED", "INTERNET": "LINKED"}
CHAR_PX = 7.0  # about the width of one character of Blender's UI font at scale 1


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


# -- small pieces ---------------------------------------------------------------------------------
def _scale(context) -> float:
    return pictures.ui_scale()


def _chars(context, indent: int = 2) -> int:
    """About how many characters fit on a line of this region, inside `indent` boxes."""
    return max(16, int((context.region.width - 30 * indent * _scale(context)) / (CHAR_PX * _scale(context))))


def _fits(context, text: str, icon: bool = True) -> bool:
    """Does `text` fit on one line of a panel in this region? The panel's margins and the
    sidebar's tab strip take about 65 px, an icon 20 px (at UI scale 1)."""
    return (len(text) * CHAR_PX + (20 if icon else 0) + 65) * _scale(context) <= context.region.width


def _wide(context) -> bool:
    return context.region.width >= 420 * _scale(context)


def _narrow(context) -> bool:
    """A sidebar at its default width: names and states each get their own line."""
    return context.region.width < 330 * _scale(context)


def _wrapped(layout, text, chars, icon="NONE"):
    """Blender labels do not wrap: split long texts (errors, lists, paths) between words.
    Most fit on one line: that is one label, with no column around it."""
    lines = view.wrap(text, chars)
    first = _i(icon) if icon != "NONE" else "NONE"
    if len(lines) == 1:
        layout.label(text=lines[0], icon=first)
        return
    col = layout.column(align=True)
    for k, line in enumerate(lines):
        col.label(text=line, icon=first if k == 0 else "NONE")


def _status(layout, kind, text, state, service="", tip=""):
    """A state as a label with its coloured icon; the tooltip explains it. (An operator
    without emboss looks like a label and is the one widget that carries a tooltip.)"""
    # The coloured picture, or without pictures (no numpy, no GUI) Blender's own icon.
    op = layout.operator("movie_director.indicator", text=text, emboss=False, **pictures.state_icon_args(state))
    op.kind = kind
    if service:
        op.service = service
    if tip:
        op.text = tip


def _note(layout, kind, text, icon="NONE", service="", tip=""):
    layout = layout.row(align=True)
    layout.alignment = "LEFT"  # a text, not a button: it starts where labels start
    op = layout.operator("movie_director.indicator", text=text, icon=_i(icon), emboss=False)
    op.kind = kind
    if service:
        op.service = service
    if tip:
        op.text = tip


def _picture(layout, context, key, side, waiting):
    """A rendered chart at its pixel size, or one line saying why there is none."""
    icon_id = pictures.icon(key)
    if not icon_id:
        _wrapped(layout, pictures.MISSING or waiting, _chars(context), "INFO" if pictures.MISSING else "TIME")
        return
    row = layout.row()
    row.alignment = "CENTER"
    row.template_icon(icon_value=icon_id, scale=(side + 8) / (20 * _scale(context)))


def _card(name, record, rng):
    """The texts the timer built for this record (runtime.refresh_cards); for a record newer
    than its last pass, or a range chosen a moment ago, built here and not kept."""
    entry = RT.cards.get(name)
    if entry is not None and entry[0] is record and entry[1] == rng:
        return entry[2]
    return view.card(record, rng)


def _active_model(card) -> str:
    p = prefs()
    return (p.active_model if p else "") or card["active_model"]


def _waiting(points: int) -> str:
    return "Collecting data: a chart needs 2 points" if points == 0 else f"Collecting data: {points} point so far"


# -- Connection Status -------------------------------------------------------------------------------
class ConnectionStatus:
    bl_label = "Backend Services"

    def draw_header(self, context):
        state = getattr(context.window_manager, STATE)
        self.layout.label(text="", **pictures.state_icon_args(view.OVERALL_STATE.get(state.overall, "offline")))

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, STATE)
        if deps.MISSING:
            col = layout.column()
            col.alert = True
            col.label(text="Missing Python packages", icon=_i("ERROR"))
            _wrapped(col, deps.MISSING, _chars(context, 1))
            return
        client = RT.client
        records = client.services if client else {}
        chars = _chars(context)

        row = layout.row(align=True)
        row.scale_y = 1.3
        words = view.overall_words(state.overall, state.overall_reason)
        light = row.row()
        light.alignment = "LEFT"
        _status(light, "overall", words, view.OVERALL_STATE.get(state.overall, "offline"))
        sub = row.row(align=True)
        sub.alignment = "RIGHT"
        sub.enabled = state.online
        sub.operator("movie_director.refresh", text="", icon=_i("FILE_REFRESH")).service = ""
        if state.online and state.overall != "GREEN":
            _wrapped(layout, state.overall_reason, _chars(context, 1))

        rows = []
        if not state.online:
            rows = self.draw_offline(context, layout, state)
        else:
            rng = state.metrics_range
            for item in state.services:
                record = records.get(item.name)
                self.draw_service(context, layout, item, record, _card(item.name, record, rng), chars)
            record = records.get(view.LLM)
            self.draw_llm(context, layout, state, record, _card(view.LLM, record, rng)["llm"])
            if state.monitor_state in ("running", "degraded", "starting"):
                row = layout.row()
                row.operator("movie_director.stop_monitor", icon=_i("PAUSE"))
            if state.monitor_state == "degraded":
                self.draw_degraded(context, layout, state)
        self.draw_discovery(context, layout)
        if state.message:
            _wrapped(layout, view.plain(state.message), _chars(context, 1), "INFO")
        instrument.trace("connection_status", {
            "overall": state.overall, "online": state.online, "space": self.bl_space_type,
            "monitor": state.monitor_state, "services": {item.name: item.state for item in state.services},
            "rows": rows})

    def draw_offline(self, context, layout, state):
        """One calm block: offline, why, and what happens next; then each service as
        name + unknown. Returns the lines of that list (the GUI test measures them)."""
        box = layout.box()
        chars = _chars(context)
        ep = RT.endpoints.snapshots if RT.endpoints else "?"
        mon = state.monitor_state
        if mon == "starting":
            _wrapped(box, "The local monitor is starting; the panels fill in as soon as it answers.", chars, "TIME")
        elif mon == "stopping":
            _wrapped(box, "The local monitor is stopping.", chars, "TIME")
        elif mon == "degraded":
            self.draw_degraded(context, box, state)
        elif mon == "running":
            _wrapped(box, f"The local monitor runs but sends no heartbeat to {ep}; it reconnects by itself.", chars)
        else:
            _wrapped(box, f"Nothing answers at {ep}. Start one here, or it reconnects by itself when a "
                          "monitor starts.", chars, "INTERNET_OFFLINE")
            if state.monitor_note:
                _wrapped(box, view.plain(state.monitor_note), chars, "ERROR")
            box.operator("movie_director.start_monitor", icon=_i("PLAY"))
        col = layout.column(align=True)
        narrow = _narrow(context)
        shown = []
        for label, service in [(item.label, item.name) for item in state.services] + [("Language Models", "")]:
            if narrow:  # one line each, "ComfyUI: unknown", where it fits; else the name above it
                line = f"{label}: unknown"
                row = col.row()
                row.alignment = "LEFT"
                if not _fits(context, line):
                    row.label(text=label)
                    shown.append(label)
                    row = col.row()
                    row.alignment = "LEFT"
                    line = "Unknown"
                _status(row, "state" if service else "llm", line, "unknown", service,
                        tip="No heartbeat from the monitor: state unknown")
                shown.append(line)
                continue
            shown += [label, "Unknown"]
            split = col.split(factor=0.45)
            split.label(text=label)
            sub = split.row()
            sub.alignment = "LEFT"
            _status(sub, "state" if service else "llm", "Unknown", "unknown", service,
                    tip="No heartbeat from the monitor: state unknown")
        return shown

    def draw_discovery(self, context, layout):
        """Find Backends: the button, then what the last scan found and Write to Config."""
        found = RT.discovery
        if found.state == discovery.IDLE:
            layout.operator("movie_director.find_backends", icon=_i("VIEWZOOM"))
            return
        box = layout.box()
        chars = _chars(context)
        if found.state == discovery.RUNNING:
            box.label(text="Writing the config" if found.writing else "Looking for backends", icon=_i("TIME"))
            return
        if found.error:
            err = box.column(align=True)
            err.alert = True
            _wrapped(err, view.plain(found.error), chars, "ERROR")
        if found.state == discovery.DONE or found.found:
            box.label(text=f"Found {len(found.found)} on {found.scanned} ports", icon=_i("VIEWZOOM"))
            col = box.column(align=True)
            for item in found.found:
                _wrapped(col, discovery.line(item), chars)
            if found.written:
                _wrapped(box, f"Written to {found.written}", chars, "CHECKMARK")
        row = box.row(align=True)
        row.operator("movie_director.find_backends", text="Again", icon=_i("FILE_REFRESH"))
        if found.found and not found.written:
            row.operator("movie_director.find_backends", text="Write to Config", icon=_i("FILE_TICK")).write = True

    def draw_degraded(self, context, layout, state):
        col = layout.column()
        col.alert = True
        _wrapped(col, view.plain(state.monitor_note or "One part of the local monitor exited"),
                 _chars(context), "ERROR")
        layout.operator("movie_director.start_monitor", text="Restart What Exited", icon=_i("PLAY"))

    def draw_service(self, context, layout, item, record, card, chars):
        box = layout.box()
        _, words, _ = view.STATES.get(item.state, view.STATES["unknown"])
        badge = ("Required", "LOCKED") if item.required else ("Optional", "UNLOCKED")
        narrow = _narrow(context)
        top = box.row(align=True)
        if narrow:  # name and badge on one line, the state under them
            name, end = top.row(align=True), top.row(align=True)
            sub = box.row(align=True)
        else:
            split = top.split(factor=0.45)
            name = split.row(align=True)
            state_row = split.row(align=True)
            sub, end = state_row.row(align=True), state_row.row(align=True)
        name.alignment = "LEFT"
        op = name.operator("movie_director.toggle_details", text=item.label, emboss=False,
                           icon=_i("TRIA_DOWN" if item.show_details else "TRIA_RIGHT"))
        op.service = item.name
        sub.alignment = "LEFT"
        _status(sub, "state", words, item.state, item.name)
        end.alignment = "RIGHT"
        _note(end, "badge", badge[0] if _wide(context) else "", badge[1], item.name)
        col = box.column(align=True)
        when = view.ago((record or {}).get("last_check"), time.time())
        if item.state in view.ANSWERING:
            if narrow:
                col.label(text=item.version or view.DASH)
                col.label(text=f"Checked {when}", icon=_i("TIME"))
            else:
                col.label(text=f"{item.version or view.DASH}, checked {when}", icon=_i("TIME"))
            caps = card["capabilities"]
            if caps != view.DASH:
                _wrapped(col, caps, chars)
        else:
            col.label(text=f"Checked {when}", icon=_i("TIME"))
            if item.error and not item.show_details:
                err = col.column(align=True)
                err.alert = True
                lines = view.wrap(view.plain(item.error), chars)
                for line in lines[:3]:
                    err.label(text=line)
                if len(lines) > 3:
                    err.label(text="(more in the details)")
        if item.show_details:
            self.draw_details(box, item, card, chars)

    def draw_details(self, box, item, card, chars):
        col = box.column(align=True)
        _wrapped(col, card["url"], chars)
        col.label(text=f"Version: {item.version or view.DASH}")
        col.label(text=f"Required: {'yes' if item.required else 'no (optional)'}")
        for line_text in card["details"] + card["resources"]:
            _wrapped(col, line_text, chars)
        if item.error and item.state not in view.UP:
            err = col.column(align=True)
            err.alert = True
            _wrapped(err, view.plain(item.error), chars, "ERROR")
            row = col.row()
            row.alignment = "LEFT"
            row.operator("movie_director.copy_error", text="Copy Error", icon=_i("COPYDOWN")).service = item.name

    def draw_llm(self, context, layout, state, record, llm):
        box = layout.box()
        if _narrow(context):
            name, sub = box.row(), box.row()
        else:
            split = box.split(factor=0.45)
            name, sub = split.row(), split.row()
        name.alignment = "LEFT"
        name.prop(state, "show_llm_details", text="Language Models", emboss=False,
                  icon=_i("TRIA_DOWN" if state.show_llm_details else "TRIA_RIGHT"))
        sub.alignment = "LEFT"
        if record is None:
            _status(sub, "llm", "Not monitored", "missing", tip="No language-model probe reports to the monitor")
        elif llm["configured"]:
            _status(sub, "llm", "Configured", "connected", tip="At least one provider has a valid key")
        else:
            _status(sub, "llm", "Not Configured", "disconnected", tip="No provider has an API key")
        col = box.column(align=True)
        if record is not None and not llm["configured"]:
            if state.show_llm_details:
                _wrapped(col, "Set one of these where the monitor runs:", _chars(context), "INFO")
                for name in view.LLM_ENV_HINT:
                    _wrapped(col, name, _chars(context))
            else:
                _wrapped(col, "No API key set: open for how to set one", _chars(context), "INFO")
        if llm["configured"]:
            col.label(text=f"Active model: {_active_model(llm)}")
            col.label(text=f"Models available: {llm['model_count']}")
        if state.show_llm_details:
            for text, trouble in llm["providers"]:
                r = col.column(align=True)
                r.alert = trouble
                _wrapped(r, text, _chars(context))
        if llm["models"]:
            row = box.row()
            row.prop(state, "show_models", emboss=False, icon=_i("TRIA_DOWN" if state.show_models else "TRIA_RIGHT"),
                     text=f"Models ({len(llm['models'])})")
            if state.show_models:
                col = box.column(align=True)
                for model in llm["models"]:
                    col.label(text=model)


# -- Health Monitoring -------------------------------------------------------------------------------
class HealthDashboard:
    bl_label = "Health Monitoring"

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, STATE)
        rng = state.metrics_range
        layout.row().prop(state, "metrics_range", expand=True)
        client = RT.client
        if client is None or not state.online:
            layout.label(text="Monitor offline: no figures", icon=_i("INTERNET_OFFLINE"))
            return
        chars = _chars(context)
        th = RT.thresholds
        self.draw_alerts(context, layout, state, client.alerts)
        idle = [item.label for item in state.services if item.state not in view.ANSWERING]
        if idle:
            _wrapped(layout, f"No live figures (not connected): {', '.join(idle)}", _chars(context, 1), "INFO")
        boxes = pictures.charted(state, client)
        side = pictures.side(context.region.width, _scale(context), len(boxes))
        n = pictures.columns(context.region.width, _scale(context), len(boxes))
        grid = layout.grid_flow(row_major=True, columns=n, even_columns=True) if n > 1 else layout
        shown = {}
        cards = {item.name: _card(item.name, client.services[item.name], rng) for item in state.services
                 if item.name in client.services}
        for item in boxes:
            card = cards[item.name]
            box = grid.box()
            box.label(text=item.label, **pictures.state_icon_args(item.state))
            p95, rate = card["p95_ms"], card["success_rate"]
            # Label and value columns, plain labels: a redraw lays out dozens of these, so
            # each costs one call (the thresholds are in their own section, with words).
            split = box.split(factor=0.35)
            names, values = split.column(align=True), split.column(align=True)
            bad = {"p95": p95 is not None and p95 > th["p95_ms"],
                   "Success": rate is not None and rate < th["success"]}
            for name, value in card["figures"]:
                names.label(text=name)
                values.label(text=value, icon="ERROR" if bad.get(name) else "NONE")
            col = box.column(align=True)
            for line_text in card["resources"]:
                _wrapped(col, line_text, chars)
            key = pictures.chart_key("trend", item.name, rng, side)
            _picture(box, context, key, side, _waiting(pictures.points(key)))
            shown[item.name] = {"p95": card["compare"]["p95"], "success": card["compare"]["success"],
                                "chart": bool(pictures.icon(key))}

        record = client.services.get(view.LLM)
        if record is not None:
            self.draw_llm_usage(layout, _card(view.LLM, record, rng)["llm"])
        self.draw_thresholds(layout, state)
        self.draw_compare(context, layout, state, cards, rng)
        row = layout.row()
        op = row.operator("movie_director.export_metrics", icon=_i("EXPORT"))
        op.range = rng if rng != "5m" else "1h"
        instrument.trace("health_dashboard", {"range": rng, "services": shown, "alerts": len(client.alerts),
                                             "space": self.bl_space_type, "width": context.region.width,
                                             "columns": n, "side": side})

    @staticmethod
    def draw_alerts(context, layout, state, alerts):
        """Active alerts: the first one in words, the rest behind a disclosure."""
        if not alerts:
            return
        col = layout.column(align=True)
        if len(alerts) > 1:
            row = col.row()
            row.alignment = "LEFT"
            row.prop(state, "show_alerts", emboss=False, text=f"{len(alerts)} active alerts",
                     icon=_i("TRIA_DOWN" if state.show_alerts else "TRIA_RIGHT"))
        shown = alerts if state.show_alerts or len(alerts) == 1 else alerts[:1]
        for alert in shown:
            sub = col.column(align=True)
            sub.alert = True
            _wrapped(sub, view.plain(str(alert.get("message") or alert.get("name"))), _chars(context, 2), "ERROR")

    def draw_llm_usage(self, layout, llm):
        box = layout.box()
        box.label(text="Language Models", icon=_i("TEXT"))
        col = box.column(align=True)
        col.label(text=f"Active model: {_active_model(llm)}")
        col.label(text=llm["usage"])
        for line_text in llm["usage_models"]:
            col.label(text=line_text)

    def draw_thresholds(self, layout, state):
        box = layout.box()
        box.prop(state, "show_thresholds", emboss=False,
                 icon=_i("TRIA_DOWN" if state.show_thresholds else "TRIA_RIGHT"))
        if state.show_thresholds:
            th = RT.thresholds
            col = box.column(align=True)
            col.label(text=f"Slow: p95 above {view.ms(th['p95_ms'])}")
            col.label(text=f"Failing: success below {view.pct(th['success'], 0)}")
            col.label(text=f"Down: for {th['down_s']:.0f} s")
            op = box.operator("preferences.addon_show", text="Edit in Preferences", icon=_i("PREFERENCES"))
            op.module = __package__

    def draw_compare(self, context, layout, state, cards, rng):
        box = layout.box()
        box.label(text=f"Compare ({rng})", icon=_i("SORTSIZE"))
        narrow = _narrow(context)  # a sidebar has room for three columns, whole numbers
        heads = ("Service", "p95", "Uptime") if narrow else ("Service", "p95", "Success", "Uptime")
        col = box.column(align=True)
        rows = [heads]
        for item in state.services:
            if item.name not in cards:
                continue
            figures = cards[item.name]["compare"]
            rows.append((item.label, figures["p95"], figures["uptime_short"]) if narrow else
                        (item.label, figures["p95"], figures["success"], figures["uptime"]))
        for cells in rows:
            split = col.split(factor=0.42)  # the names need the room, the figures are short
            split.label(text=cells[0])
            rest = split.row(align=True)
            for cell in cells[1:]:
                rest.label(text=cell)


class MetricsHistory:
    bl_label = "Metrics History"

    def draw(self, context):
        layout = self.layout
        state = getattr(context.window_manager, STATE)
        if RT.client is None or not state.online:
            layout.label(text="Monitor offline", icon=_i("INTERNET_OFFLINE"))
            return
        rng = state.metrics_range
        layout.row().prop(state, "metrics_range", expand=True)
        side = pictures.history_side(context.region.width, _scale(context))
        key = pictures.chart_key("history", "all", rng, side)
        _picture(layout, context, key, side, "Collecting data: no service has 2 points yet")
        layout.operator("movie_director.open_history_window", icon=_i("WINDOW"))
        col = layout.column(align=True)
        _wrapped(col, f"p95 response time of each service over {rng}, each on its own scale. "
                      "Red marks: failed checks. Dashed: the slow threshold.", _chars(context, 1))


for _mixin in (ConnectionStatus, HealthDashboard, MetricsHistory):
    _mixin.draw = instrument.timed(_mixin.draw)


# -- the panel classes: the same three in each of the three editors -----------------------------------
# The 3D Viewport keeps the plain ids, the other editors add a suffix (ids are unique per
# class). The Properties editor has room, so its sub-panels start open.
class MOVIE_DIRECTOR_PT_connection_status(View3DSidebar, ConnectionStatus, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_connection_status"
    bl_ui_units_x = 14  # its width when the status bar shows it as a popover


class MOVIE_DIRECTOR_PT_health_dashboard(View3DSidebar, HealthDashboard, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_health_dashboard"
    bl_parent_id = "MOVIE_DIRECTOR_PT_connection_status"
    bl_options = {"DEFAULT_CLOSED"}


class MOVIE_DIRECTOR_PT_metrics_history(View3DSidebar, MetricsHistory, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_metrics_history"
    bl_parent_id = "MOVIE_DIRECTOR_PT_health_dashboard"
    bl_options = {"DEFAULT_CLOSED"}


class MOVIE_DIRECTOR_PT_connection_status_sequencer(SequencerSidebar, ConnectionStatus, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_connection_status_sequencer"


class MOVIE_DIRECTOR_PT_health_dashboard_sequencer(SequencerSidebar, HealthDashboard, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_health_dashboard_sequencer"
    bl_parent_id = "MOVIE_DIRECTOR_PT_connection_status_sequencer"
    bl_options = {"DEFAULT_CLOSED"}


class MOVIE_DIRECTOR_PT_metrics_history_sequencer(SequencerSidebar, MetricsHistory, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_metrics_history_sequencer"
    bl_parent_id = "MOVIE_DIRECTOR_PT_health_dashboard_sequencer"
    bl_options = {"DEFAULT_CLOSED"}


class MOVIE_DIRECTOR_PT_connection_status_properties(PropertiesScene, ConnectionStatus, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_connection_status_properties"


class MOVIE_DIRECTOR_PT_health_dashboard_properties(PropertiesScene, HealthDashboard, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_health_dashboard_properties"
    bl_parent_id = "MOVIE_DIRECTOR_PT_connection_status_properties"


class MOVIE_DIRECTOR_PT_metrics_history_properties(PropertiesScene, MetricsHistory, Panel):
    bl_idname = "MOVIE_DIRECTOR_PT_metrics_history_properties"
    bl_parent_id = "MOVIE_DIRECTOR_PT_health_dashboard_properties"


classes = (
    MOVIE_DIRECTOR_PT_connection_status,
    MOVIE_DIRECTOR_PT_health_dashboard,
    MOVIE_DIRECTOR_PT_metrics_history,
    MOVIE_DIRECTOR_PT_connection_status_sequencer,
    MOVIE_DIRECTOR_PT_health_dashboard_sequencer,
    MOVIE_DIRECTOR_PT_metrics_history_sequencer,
    MOVIE_DIRECTOR_PT_connection_status_properties,
    MOVIE_DIRECTOR_PT_health_dashboard_properties,
    MOVIE_DIRECTOR_PT_metrics_history_properties,
)

# Registers in order and unregisters in reverse, as Blender's own modules do.
register, unregister = bpy.utils.register_classes_factory(classes)
