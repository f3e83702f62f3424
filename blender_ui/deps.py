"""The one place the add-on imports the bus package from.

Built add-on (`make addon`): the build copies the repository's `bus/` into the add-on as a
subpackage, so it travels with the extension and never clashes with another add-on's
modules. Running from the repository: there is no copy, and the top-level `bus` is used.
Either way the rest of the add-on writes `from .deps import client, sockets, lifeline`.

pyzmq and msgpack may be missing (a legacy install into a Blender whose Python lacks
them): the add-on still registers and says what to install instead of failing to load.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent

if importlib.util.find_spec(f"{__package__}.bus") is not None:
    BUS_PACKAGE = f"{__package__}.bus"
    BACKEND_ROOT = ADDON_DIR  # holds bus/, aggregator/ and probes/ for the child processes
else:
    BUS_PACKAGE = "bus"
    BACKEND_ROOT = ADDON_DIR.parent  # the repository root

try:
    client = importlib.import_module(f"{BUS_PACKAGE}.client")
    sockets = importlib.import_module(f"{BUS_PACKAGE}.sockets")
    lifeline = importlib.import_module(f"{BUS_PACKAGE}.lifeline")
    MISSING = ""
except ImportError as exc:  # pyzmq or msgpack not installed in this Blender's Python
    client = sockets = lifeline = None
    MISSING = (f"{exc}. Install pyzmq and msgpack into Blender's Python: "
               f"\"{sys.executable}\" -m pip install pyzmq msgpack")


def child_environment(python: str) -> dict[str, str]:
    """Environment for the aggregator and probe children: they import the top-level
    `bus`, `aggregator` and `probes` packages from BACKEND_ROOT. When they run on
    Blender's own Python they also need the paths Blender added at run time (the
    extension's bundled wheels); a different interpreter keeps its own paths, so its
    packages are not shadowed by Blender's."""
    paths = [str(BACKEND_ROOT)]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths += [p for p in sys.path if p and os.path.isdir(p)]
    old = os.environ.get("PYTHONPATH")
    if old:
        paths.append(old)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
