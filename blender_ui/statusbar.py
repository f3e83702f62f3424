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


def register():
    bpy.types.STATUSBAR_HT_header.append(draw)


def unregister():
    bpy.types.STATUSBAR_HT_header.remove(draw)
