"""The overall indicator in Blender's status bar, visible in every workspace: the light
and a few words ("AI backends: 1 down"). Clicking it opens the Backend Services panel as
a popover, wherever the artist is."""
import bpy

from . import instrument, pictures, view
from .state import STATE


def draw(self, context):
    state = getattr(context.window_manager, STATE, None)
    if state is None:
        return
    row = self.layout.row(align=True)
    row.alert = state.overall == "RED"
    row.popover(panel="MOVIE_DIRECTOR_PT_connection_status", text=state.overall_short,
                **pictures.state_icon_args(view.OVERALL_STATE.get(state.overall, "offline")))
    instrument.trace("statusbar", {"text": state.overall_short, "overall": state.overall})


def tag_redraw(wm) -> None:
    """The status bar is a window-level area that `screen.areas` does not list and no
    Python API tags for redraw; clearing the workspace's status text (the hint line that a
    modal operator sets, and sets again on its next event) is the one call that redraws it.
    So it is called only when the indicator's words changed, which is rare."""
    for window in wm.windows:
        try:
            with bpy.context.temp_override(window=window, screen=window.screen):
                window.workspace.status_text_set(None)
        except (AttributeError, RuntimeError, TypeError):  # no temp_override (< 3.2) or no window
            pass


def register():
    bpy.types.STATUSBAR_HT_header.append(draw)


def unregister():
    bpy.types.STATUSBAR_HT_header.remove(draw)
