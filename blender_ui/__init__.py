"""Movie Director backend health: Connection Status and Health Monitoring panels fed live
from the ZeroMQ bus (see docs/blender.md). Blender 3.4+ as a legacy add-on, 4.2+ as an
extension (blender_manifest.toml)."""

bl_info = {
    "name": "Movie Director Backend Health",
    "author": "Movie Director",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport / Video Sequencer > Sidebar > Movie Director; Properties > Scene; Status Bar",
    "description": "Live status and health metrics of ComfyUI, Wan2GP, RVC, AudioLDM and language models",
    "category": "System",
}

if "props" in locals():  # F3 "Reload Scripts": reload the submodules too, leaves first
    import importlib

    # charts.py (numpy) is imported by pictures.py only, so the add-on loads without numpy.
    _charts = [pictures.charts] if pictures.charts else []  # noqa: F821
    for _mod in (deps, view, glyphs, *_charts, thresholds, monitor, state, instrument, pictures,  # noqa: F821
                 history_window, connection, exports, runtime, props, prefs, operators, panels,  # noqa: F821
                 statusbar, keymap, lifecycle):  # noqa: F821
        importlib.reload(_mod)

from . import (connection, deps, exports, glyphs, history_window, instrument, keymap, lifecycle, monitor,  # noqa: E402
               operators, panels, pictures, prefs, props, runtime, state, statusbar, thresholds, view)

# Registered in this order, unregistered in reverse (as Node Wrangler does).
_modules = (props, prefs, operators, panels, statusbar, keymap, lifecycle)


def register():
    for mod in _modules:
        mod.register()


def unregister():
    for mod in reversed(_modules):
        mod.unregister()
