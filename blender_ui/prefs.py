"""Add-on preferences: endpoints, timer interval, required services, model, auto-start."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty
from bpy.types import AddonPreferences

from . import deps, view

_DEFAULTS = {"events": "tcp://127.0.0.1:5581", "snapshots": "tcp://127.0.0.1:5582",
             "requests": "tcp://127.0.0.1:5583"}
REQUIRED_ITEMS = [("AUTO", "As Configured", "Use the monitor's config (services.<name>.required)"),
                  ("REQUIRED", "Required", "Movie Director needs this service: red light when it is down"),
                  ("OPTIONAL", "Optional", "Nice to have: yellow light when it is down")]


def _endpoints_changed(self, context):
    from . import connection, state as st
    problem = connection.connect()
    state = st.wm_state(context.window_manager)
    if state is not None:
        state.message = problem or "Endpoints changed: reconnecting"


def _settings_changed(self, context):
    from . import connection, runtime
    connection.apply_prefs(self)
    runtime.run_sync(context.window_manager)


def _required(name: str, label: str, default: str):
    return EnumProperty(name=label, items=REQUIRED_ITEMS, default=default, update=_settings_changed,
                        description=f"Is {label} required for your work?")


class MOVIE_DIRECTOR_AP_preferences(AddonPreferences):
    bl_idname = __package__

    events: StringProperty(name="Events", default=_DEFAULTS["events"], update=_endpoints_changed,
                           description="Where probes publish (the aggregator binds here)")
    snapshots: StringProperty(name="Snapshots", default=_DEFAULTS["snapshots"], update=_endpoints_changed,
                              description="Where the aggregator publishes snapshots and heartbeats")
    requests: StringProperty(name="Requests", default=_DEFAULTS["requests"], update=_endpoints_changed,
                             description="Where the aggregator answers snapshot, refresh and export requests")
    interval: FloatProperty(name="Timer Interval", default=0.05, min=0.01, max=1.0, step=1, precision=3,
                            unit="TIME_ABSOLUTE", update=_settings_changed,
                            description="Seconds between two looks at the bus. 0.05 s keeps a status change "
                                        "on screen within 100 ms; each look costs a few microseconds when idle")
    required_comfyui: _required("comfyui", "ComfyUI", "AUTO")
    required_wan2gp: _required("wan2gp", "Wan2GP", "AUTO")
    required_rvc: _required("rvc", "RVC", "AUTO")
    required_audioldm: _required("audioldm", "AudioLDM", "AUTO")
    active_model: StringProperty(name="Active Model", update=_settings_changed,
                                 description="The language model Movie Director uses (empty: the monitor's choice)")
    auto_start: BoolProperty(name="Start Local Monitor With the Add-on", default=False,
                             description="Start the aggregator and probes when the add-on is enabled")
    p95_warn_ms: FloatProperty(name="Slow Above", default=500.0, min=1.0, max=600000.0, precision=0,
                               update=_settings_changed,
                               description="p95 response time (ms) above which a service counts as slow "
                                           "(yellow bar, alert p95_ms)")
    p95_bad_ms: FloatProperty(name="Very Slow Above", default=2000.0, min=1.0, max=600000.0, precision=0,
                              update=_settings_changed,
                              description="p95 response time (ms) above which the bar turns red")
    success_warn_pct: FloatProperty(name="Success Below", default=90.0, min=0.0, max=100.0, precision=1,
                                    subtype="PERCENTAGE", update=_settings_changed,
                                    description="Share of successful checks under which an alert is raised "
                                                "(alert success_pct)")
    down_after_s: FloatProperty(name="Down For", default=60.0, min=1.0, max=86400.0, precision=0,
                                unit="TIME_ABSOLUTE", update=_settings_changed,
                                description="Seconds a service must be down before an alert is raised "
                                            "(alert down_s)")
    monitor_python: StringProperty(name="Python for the Monitor", subtype="FILE_PATH",
                                   description="Interpreter that runs the local monitor. Empty: Blender's own "
                                               "Python (with the bundled packages)")

    def draw(self, context):
        from . import state as st

        layout = self.layout
        if deps.MISSING:
            col = layout.column()
            col.alert = True
            col.label(text="Missing Python packages:", icon="ERROR")
            col.label(text=deps.MISSING)
        box = layout.box()
        box.label(text="Monitor Endpoints", icon="LINKED")
        col = box.column(align=True)
        col.prop(self, "events")
        col.prop(self, "snapshots")
        col.prop(self, "requests")
        row = box.row()
        row.operator("movie_director.test_connection", icon="PLUGIN")
        state = st.wm_state(context.window_manager)
        if state is not None and state.message:
            box.label(text=state.message, icon="INFO")

        box = layout.box()
        box.label(text="Local Monitor", icon="CONSOLE")
        box.prop(self, "auto_start")
        box.prop(self, "monitor_python")
        row = box.row()
        row.operator("movie_director.start_monitor", icon="PLAY")
        row.operator("movie_director.stop_monitor", icon="PAUSE")
        if st.RT.log_path:
            box.label(text=f"Log: {st.RT.log_path}")

        box = layout.box()
        box.label(text="Services", icon="PREFERENCES")
        grid = box.grid_flow(columns=2, even_columns=True)
        for name, _label in view.BACKENDS:
            grid.prop(self, f"required_{name}")
        box.prop(self, "active_model")
        box.prop(self, "interval")

        box = layout.box()
        box.label(text="Alert Thresholds", icon="ERROR")
        col = box.column(align=True)
        col.use_property_split = True
        col.prop(self, "p95_warn_ms", text="Slow Above (ms)")
        col.prop(self, "p95_bad_ms", text="Very Slow Above (ms)")
        col.prop(self, "success_warn_pct")
        col.prop(self, "down_after_s")
        box.label(text="The panels use these at once; the monitor reads them from its config when it starts.")
        box.operator("movie_director.write_thresholds", icon="FILE_TICK")


classes = (MOVIE_DIRECTOR_AP_preferences,)

# Registers in order and unregisters in reverse, as Blender's own modules do.
register, unregister = bpy.utils.register_classes_factory(classes)
