"""Operators: one small one per job. Every one the artist can run has a name that reads on
its own in F3 search; the two that only serve the panels (details toggle, indicator
tooltips) are internal."""
import time

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from . import connection, exports, history_window, monitor, view
from .props import RANGE_ITEMS
from .state import RT, STATE


def _state(context):
    return getattr(context.window_manager, STATE)


class MOVIE_DIRECTOR_OT_refresh(Operator):
    """Ask the probes to check their backends now"""
    bl_idname = "movie_director.refresh"
    bl_label = "Refresh Backend Status"

    service: StringProperty(name="Service", description="One service, or empty for all")

    def execute(self, context):
        client = RT.client
        if client is None or not client.online:
            self.report({"WARNING"}, "Monitor offline: start it first")
            return {"CANCELLED"}
        client.refresh(self.service or None)
        client.request_snapshot(RT.range)
        self.report({"INFO"}, f"Re-checking {view.label_of(self.service) if self.service else 'all services'}")
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_start_monitor(Operator):
    """Start the aggregator and probes as child processes of Blender; they stop with it"""
    bl_idname = "movie_director.start_monitor"
    bl_label = "Start Local Monitor"

    def execute(self, context):
        ok, note = monitor.start_local()
        # The panel shows the monitor's state itself; the message line is for problems.
        _state(context).message = "" if ok else note
        self.report({"INFO"} if ok else {"WARNING"}, note)
        return {"FINISHED"} if ok else {"CANCELLED"}


class MOVIE_DIRECTOR_OT_stop_monitor(Operator):
    """Stop the aggregator and probes this add-on started, and nothing else"""
    bl_idname = "movie_director.stop_monitor"
    bl_label = "Stop Local Monitor"

    def execute(self, context):
        n = monitor.stop_local(wait=False)
        note = "Stopping the local monitor" if n else "This add-on has not started a monitor"
        _state(context).message = "" if n else note
        self.report({"INFO"}, note)
        return {"FINISHED"} if n else {"CANCELLED"}


class MOVIE_DIRECTOR_OT_find_backends(Operator):
    """Look for AI backends on this computer's usual ports (loopback only), with the local monitor's Python"""
    bl_idname = "movie_director.find_backends"
    bl_label = "Find Backends"

    write: bpy.props.BoolProperty(name="Write to Config", options={"SKIP_SAVE"},
                                  description="Also write what is found into the monitor's config file")

    def execute(self, context):
        ok, note = monitor.find_backends(self.write)
        _state(context).message = "" if ok else note
        self.report({"INFO"} if ok else {"WARNING"}, note)
        return {"FINISHED"} if ok else {"CANCELLED"}


class MOVIE_DIRECTOR_OT_copy_error(Operator):
    """Copy this service's error message to the clipboard"""
    bl_idname = "movie_director.copy_error"
    bl_label = "Copy Service Error"

    service: StringProperty(name="Service")

    def execute(self, context):
        item = _state(context).services.get(self.service)
        if item is None or not item.error:
            self.report({"WARNING"}, "No error to copy")
            return {"CANCELLED"}
        context.window_manager.clipboard = item.error
        self.report({"INFO"}, "Error copied to the clipboard")
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_test_connection(Operator):
    """Reconnect to the endpoints in the preferences and report whether a monitor answers"""
    bl_idname = "movie_director.test_connection"
    bl_label = "Test Monitor Connection"

    def execute(self, context):
        note = connection.test_connection()
        _state(context).message = note
        self.report({"INFO"}, note)
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_write_thresholds(Operator):
    """Write the alert thresholds into the monitor's config file; it applies them when it starts"""
    bl_idname = "movie_director.write_thresholds"
    bl_label = "Write Thresholds to Monitor Config"

    def execute(self, context):
        from . import thresholds

        path = thresholds.config_path()
        if path is None:
            self.report({"ERROR"}, "No config path: set MD_HEALTH_CONFIG for Blender and the monitor")
            return {"CANCELLED"}
        t = RT.thresholds
        try:
            thresholds.write(path, {"p95_ms": t["p95_ms"], "success_pct": round(t["success"] * 100, 3),
                                    "down_s": t["down_s"]})
        except OSError as exc:
            self.report({"ERROR"}, f"Cannot write {path}: {exc.strerror or exc}")
            return {"CANCELLED"}
        note = f"Thresholds written to {path}; restart the monitor to apply them"
        _state(context).message = note
        self.report({"INFO"}, note)
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_toggle_details(Operator):
    """Show or hide this service's details"""
    bl_idname = "movie_director.toggle_details"
    bl_label = "Toggle Service Details"
    bl_options = {"INTERNAL"}

    service: StringProperty()

    def execute(self, context):
        item = _state(context).services.get(self.service)
        if item is None:
            return {"CANCELLED"}
        item.show_details = not item.show_details
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_indicator(Operator):
    """A status shown as text: its tooltip explains it"""
    bl_idname = "movie_director.indicator"
    bl_label = "Backend Status"
    bl_options = {"INTERNAL"}

    kind: StringProperty()      # overall, state, badge, llm
    service: StringProperty()
    text: StringProperty()      # a tooltip computed at draw time

    @classmethod
    def description(cls, context, props):
        return explain(context, props.kind, props.service, props.text)

    def execute(self, context):
        self.report({"INFO"}, explain(context, self.kind, self.service, self.text))
        return {"FINISHED"}


def explain(context, kind: str, service: str, text: str = "") -> str:
    """One tooltip per indicator, each saying its one thing once."""
    state = _state(context)
    item = state.services.get(service) if service else None
    if kind == "overall":
        return f"{state.overall_reason}.\n{view.OVERALL_RULE}" if state.overall != "GREEN" else view.OVERALL_RULE
    if kind == "state" and item is not None:
        meaning = view.STATES.get(item.state, view.STATES["unknown"])[2]
        return f"{meaning}\n{view.plain(item.error)}" if item.error and item.state != "connected" else meaning
    if kind == "badge" and item is not None:
        return (f"When {item.label} is down the light turns {'red' if item.required else 'yellow'}; "
                "change it in the add-on preferences")
    return text or "Movie Director backend health"


class MOVIE_DIRECTOR_OT_export_metrics(Operator):
    """Export the metrics history as CSV or JSON"""
    bl_idname = "movie_director.export_metrics"
    bl_label = "Export Health Metrics"

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.csv;*.json", options={"HIDDEN"})
    format: EnumProperty(name="Format", items=[("csv", "CSV", "Comma-separated values"),
                                               ("json", "JSON", "JSON document")], default="csv")
    range: EnumProperty(name="Range", items=RANGE_ITEMS, default="24h", description="How far back to export")
    service: StringProperty(name="Service", description="One service, or empty for all")

    TIMEOUT = 10.0

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = f"movie_director_health_{time.strftime('%Y%m%d_%H%M%S')}.{self.format}"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        client = RT.client
        if client is None or not client.online:
            self.report({"ERROR"}, "Monitor offline: nothing to export")
            return {"CANCELLED"}
        self._rid = client.export(self.format, exports.TIER[self.range], self.range, self.service or None)
        if self._rid is None:
            self.report({"ERROR"}, "The monitor is not reachable")
            return {"CANCELLED"}
        self._deadline = time.monotonic() + self.TIMEOUT
        if bpy.app.background:
            # No event loop without a UI (scripts, tests): wait here, pumping the client.
            while time.monotonic() < self._deadline and self._rid not in client.replies:
                client.poll(timeout_ms=50)
            return self._finish(context)
        # With a UI, never wait: the main timer pumps the client, a modal timer looks for the reply.
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        context.window_manager.modal_handler_add(self)
        _state(context).message = "Exporting metrics ..."
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if self._rid in (RT.client.replies if RT.client else {}) or time.monotonic() > self._deadline:
            context.window_manager.event_timer_remove(self._timer)
            return self._finish(context)
        return {"PASS_THROUGH"}

    def _finish(self, context):
        reply = RT.client.replies.pop(self._rid, None) if RT.client else None
        if reply is None:
            note = f"The monitor did not answer the export within {self.TIMEOUT:g} s"
            self.report({"ERROR"}, note)
            _state(context).message = note
            return {"CANCELLED"}
        try:
            note = exports.write_export(reply, self.filepath, self.format)
        except exports.ExportError as exc:
            note = f"Export failed: {exc}"
            self.report({"ERROR"}, note)
            _state(context).message = note
            return {"CANCELLED"}
        self.report({"INFO"}, note)
        _state(context).message = note
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_open_history_window(Operator):
    """Open the Metrics History in a window of its own: every service on one large chart over the chosen range"""
    bl_idname = "movie_director.open_history_window"
    bl_label = "Open Metrics History Window"

    @classmethod
    def poll(cls, context):
        return context.window is not None and not bpy.app.background

    def execute(self, context):
        problem = history_window.open_window(context)
        if problem:
            self.report({"WARNING"}, problem)
            return {"CANCELLED"}
        return {"FINISHED"}


classes = (
    MOVIE_DIRECTOR_OT_refresh,
    MOVIE_DIRECTOR_OT_start_monitor,
    MOVIE_DIRECTOR_OT_stop_monitor,
    MOVIE_DIRECTOR_OT_copy_error,
    MOVIE_DIRECTOR_OT_find_backends,
    MOVIE_DIRECTOR_OT_test_connection,
    MOVIE_DIRECTOR_OT_write_thresholds,
    MOVIE_DIRECTOR_OT_toggle_details,
    MOVIE_DIRECTOR_OT_indicator,
    MOVIE_DIRECTOR_OT_export_metrics,
    MOVIE_DIRECTOR_OT_open_history_window,
)

# Registers in order and unregisters in reverse, as Blender's own modules do.
register, unregister = bpy.utils.register_classes_factory(classes)
