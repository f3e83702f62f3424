"""Operators: refresh, local monitor start/stop, copy an error, export, test connection,
and the indicator buttons whose tooltips explain each status."""
import time

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from . import runtime, view
from .props import RANGE_ITEMS

RT = runtime.RT


def _state(context):
    return getattr(context.window_manager, runtime.STATE)


class MOVIE_DIRECTOR_OT_refresh(Operator):
    """Ask the probes to check now; fresh results show within a second"""
    bl_idname = "movie_director.refresh"
    bl_label = "Refresh"

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
    """Start the aggregator and the probes as child processes of Blender (stopped with it)"""
    bl_idname = "movie_director.start_monitor"
    bl_label = "Start Local Monitor"

    def execute(self, context):
        ok, note = runtime.start_monitor()
        _state(context).message = note
        self.report({"INFO"} if ok else {"WARNING"}, note)
        return {"FINISHED"} if ok else {"CANCELLED"}


class MOVIE_DIRECTOR_OT_stop_monitor(Operator):
    """Stop the aggregator and probes this add-on started (nothing else)"""
    bl_idname = "movie_director.stop_monitor"
    bl_label = "Stop Local Monitor"

    def execute(self, context):
        n = runtime.stop_monitor(wait=False)
        note = "Stopping the local monitor" if n else "This add-on has not started a monitor"
        _state(context).message = note
        self.report({"INFO"}, note)
        return {"FINISHED"} if n else {"CANCELLED"}


class MOVIE_DIRECTOR_OT_copy_error(Operator):
    """Copy this service's error message to the clipboard"""
    bl_idname = "movie_director.copy_error"
    bl_label = "Copy"

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
    """Reconnect to the endpoints above and report whether a monitor answers"""
    bl_idname = "movie_director.test_connection"
    bl_label = "Test Connection"

    def execute(self, context):
        note = runtime.test_connection()
        _state(context).message = note
        self.report({"INFO"}, note)
        return {"FINISHED"}


class MOVIE_DIRECTOR_OT_indicator(Operator):
    """A status indicator: hover for what it means, click to print it in the status bar"""
    bl_idname = "movie_director.indicator"
    bl_label = "Status"
    bl_options = {"INTERNAL"}

    kind: StringProperty()      # overall, state, badge, last_check, llm, metric
    service: StringProperty()
    text: StringProperty()      # a tooltip computed at draw time

    @classmethod
    def description(cls, context, props):
        return explain(context, props.kind, props.service, props.text)

    def execute(self, context):
        self.report({"INFO"}, explain(context, self.kind, self.service, self.text))
        return {"FINISHED"}


def explain(context, kind: str, service: str, text: str = "") -> str:
    state = _state(context)
    item = state.services.get(service) if service else None
    if kind == "overall":
        return f"{view.OVERALL.get(state.overall, ('', state.overall))[1]}. {state.overall_reason}.\n{view.OVERALL_RULE}"
    if kind == "state" and item is not None:
        icon, words, meaning = view.STATES.get(item.state, view.STATES["unknown"])
        extra = f"\n{item.error}" if item.error else ""
        return f"{item.label}: {words}. {meaning}{extra}"
    if kind == "badge" and item is not None:
        return (f"{item.label} is {'required' if item.required else 'optional'} for Movie Director: when it is "
                f"down the light turns {'red' if item.required else 'yellow'}. Change it in the preferences")
    if kind == "last_check" and item is not None:
        when = item.last_check or "never"
        return f"Last check of {item.label} at {when}. The probe checks every few seconds; Refresh checks now"
    return text or "Movie Director backend health"


class MOVIE_DIRECTOR_OT_export_metrics(Operator):
    """Export metrics history as CSV or JSON; the monitor serves it over the bus"""
    bl_idname = "movie_director.export_metrics"
    bl_label = "Export Metrics"

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
        self._rid = client.export(self.format, runtime.EXPORT_TIER[self.range], self.range, self.service or None)
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
            note = runtime.write_export(reply, self.filepath, self.format)
        except runtime.ExportError as exc:
            note = f"Export failed: {exc}"
            self.report({"ERROR"}, note)
            _state(context).message = note
            return {"CANCELLED"}
        self.report({"INFO"}, note)
        _state(context).message = note
        return {"FINISHED"}


classes = (
    MOVIE_DIRECTOR_OT_refresh,
    MOVIE_DIRECTOR_OT_start_monitor,
    MOVIE_DIRECTOR_OT_stop_monitor,
    MOVIE_DIRECTOR_OT_copy_error,
    MOVIE_DIRECTOR_OT_test_connection,
    MOVIE_DIRECTOR_OT_indicator,
    MOVIE_DIRECTOR_OT_export_metrics,
)

# Registers in order and unregisters in reverse, as Blender's own modules do.
register, unregister = bpy.utils.register_classes_factory(classes)
