"""What enabling and disabling the add-on does beyond registering classes: the pictures,
the client, the timer, the file-load handler, the exit hook and auto-start."""
import atexit
import logging

import bpy

from . import connection, deps, history_window, instrument, monitor, pictures, runtime
from .state import RT, STATE, prefs

log = logging.getLogger(__package__)


def register() -> None:
    pictures.open_previews()
    connection.apply_prefs()
    problem = connection.connect()
    wm = bpy.context.window_manager
    state = getattr(wm, STATE, None) if wm else None
    if problem and state is not None:
        state.message = problem
    atexit.unregister(_on_exit)  # atexit cannot be queried: make sure it is there exactly once
    atexit.register(_on_exit)
    if bpy.app.handlers.load_post.count(runtime.force_sync) == 0:
        bpy.app.handlers.load_post.append(runtime.force_sync)
    runtime.force_sync()  # values left on the window manager by an earlier registration are stale
    runtime.start_timer()
    history_window.add_handlers()
    p = prefs()
    if p is not None and p.auto_start and not deps.MISSING:
        ok, note = monitor.start_local()
        log.info("Movie Director health: auto-start: %s", note)
        if state is not None:
            state.message = note


def _on_exit() -> None:
    monitor.on_exit()
    instrument.flush()


def unregister() -> None:
    runtime.stop_timer()
    if runtime.force_sync in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(runtime.force_sync)
    monitor.on_exit()
    RT.discovery.stop()
    instrument.flush()
    atexit.unregister(_on_exit)
    connection.disconnect()
    history_window.remove_handlers()
    history_window.close(bpy.context.window_manager)
    pictures.close_previews()
    RT.written.clear()
    RT.samples.clear()
    RT.errors_logged.clear()
    wm = bpy.context.window_manager
    if wm is not None and hasattr(wm, STATE):  # stored values would outlive the definition
        wm.property_unset(STATE)
