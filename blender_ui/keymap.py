"""A shortcut for Refresh where the panels are (F5, the usual refresh key, unused by
Blender's default keymap in these editors), added with the add-on and removed with it."""
import bpy

KEY = "F5"
# (keymap name, space type): the keymaps Blender runs in the sidebars and Properties editor.
WHERE = (("3D View Generic", "VIEW_3D"), ("SequencerCommon", "SEQUENCE_EDITOR"), ("Property Editor", "PROPERTIES"))

_items: list = []  # (keymap, keymap item) this add-on added


def register():
    kc = bpy.context.window_manager.keyconfigs.addon
    if kc is None:  # Blender in background mode has no add-on key configuration
        return
    for name, space in WHERE:
        km = kc.keymaps.new(name=name, space_type=space)
        kmi = km.keymap_items.new("movie_director.refresh", KEY, "PRESS")
        kmi.properties.service = ""
        _items.append((km, kmi))


def unregister():
    for km, kmi in _items:
        try:
            km.keymap_items.remove(kmi)
        except (ReferenceError, RuntimeError):  # the key configuration went away first
            pass
    _items.clear()
