"""Movie Director backend health: Connection Status and Health Monitoring panels fed live
from the ZeroMQ bus (see docs/blender.md). Blender 3.4+ as a legacy add-on, 4.2+ as an
extension (blender_manifest.toml)."""

bl_info = {
    "name": "Movie Director Backend Health",
    "author": "Movie Director",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport / Video Sequencer > Sidebar > Movie Director; Properties > Scene",
    "description": "Live status and health metrics of ComfyUI, Wan2GP, RVC, AudioLDM and language models",
    "category": "System",
}

if "props" in locals():  # F3 "Reload Scripts": reload the submodules too
    import importlib

    for _mod in (deps, view, charts, props, prefs, runtime, operators, panels):  # noqa: F821
        importlib.reload(_mod)

from . import charts, deps, operators, panels, prefs, props, runtime, view  # noqa: E402

_modules = (props, prefs, operators, panels)


def register():
    for mod in _modules:
        mod.register()
    runtime.register()


def unregister():
    runtime.unregister()
    for mod in reversed(_modules):
        mod.unregister()
