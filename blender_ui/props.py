"""Runtime status on the window manager: never saved into the .blend, no undo steps.

The timer mirrors the status the panels need here (state, required, version, error, last
check, the traffic light) and writes a property only when its value changed. Bulky data
(statistics, history, details) stays in the client's dictionaries, off bpy data; the
panels read it at draw time.
"""

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)
from bpy.types import PropertyGroup

from . import view

RANGE_ITEMS = [("5m", "5 m", "The last five minutes"), ("1h", "1 h", "The last hour"),
               ("24h", "24 h", "The last 24 hours")]
COMPARE_ITEMS = [("p95", "p95", "Compare the 95th percentile of response times"),
                 ("success", "Success", "Compare success rates"),
                 ("uptime", "Uptime", "Compare uptime over the range")]


def _redraw_windows(self, context):
    """Nothing to do: having an update callback is the point. Setting a Python-defined
    property that has one makes Blender send the NC_WINDOW notifier, which every region
    listens to, the status bar included (a window-level area that no Python API can tag
    for redraw). The timer writes the indicator's words only when they change, which is
    rare, so the status bar follows them without touching the workspace's status text
    (a modal tool's hint line)."""


def _range_changed(self, context):
    from . import connection  # late: it imports the add-on's other modules
    connection.history_range_changed(self.metrics_range)


class MOVIE_DIRECTOR_PG_service(PropertyGroup):
    # `name` (built in) is the service id, e.g. "comfyui".
    label: StringProperty(name="Service")
    state: StringProperty(name="State", description="connected, connecting, disconnected, error, unknown, "
                          "offline (monitor not running) or missing (not monitored)")
    required: BoolProperty(name="Required", description="Movie Director needs this service")
    version: StringProperty(name="Version")
    error: StringProperty(name="Error")
    # Wall-clock time of the last check as text: a FloatProperty is single precision, far too
    # coarse for a Unix time (the exact value stays in the client's record).
    last_check: StringProperty(name="Last check", description="Local time of the last check (empty: never)")
    show_details: BoolProperty(name="Details", description="Show URL, version, devices, queue, resources and error")


class MOVIE_DIRECTOR_PG_health(PropertyGroup):
    online: BoolProperty(name="Monitor online", description="Heartbeats arrive from the monitor")
    overall: StringProperty(name="Overall health", default="OFFLINE", description=view.OVERALL_RULE)
    overall_reason: StringProperty(name="Why")
    overall_short: StringProperty(name="Summary", default="AI backends: monitor offline", update=_redraw_windows)
    llm_state: StringProperty(name="Language models")
    services: CollectionProperty(type=MOVIE_DIRECTOR_PG_service)
    monitor_state: StringProperty(name="Local monitor", default="stopped",
                                  description="stopped, starting, running, degraded (one child exited) or stopping")
    monitor_note: StringProperty(name="Local monitor note", description="Why the local monitor stopped or degraded")
    message: StringProperty(name="Message", description="The last thing the add-on has to tell you")
    updates: IntProperty(name="Updates", description="How many times the timer changed a value here")
    # Interface state, set by the user:
    metrics_range: EnumProperty(name="Range", items=RANGE_ITEMS, default="5m", update=_range_changed,
                                description="Time range of the health figures and charts")
    compare_metric: EnumProperty(name="Compare", items=COMPARE_ITEMS, default="p95")
    show_models: BoolProperty(name="Models", description="Show the list of available models")
    show_llm_details: BoolProperty(name="Details", description="Show providers and their states")
    show_alerts: BoolProperty(name="Alerts", description="Show every active alert")
    show_thresholds: BoolProperty(name="Alert Thresholds", description="Show the thresholds that raise alerts")


classes = (MOVIE_DIRECTOR_PG_service, MOVIE_DIRECTOR_PG_health)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.movie_director_health = PointerProperty(type=MOVIE_DIRECTOR_PG_health)


def unregister():
    del bpy.types.WindowManager.movie_director_health
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
