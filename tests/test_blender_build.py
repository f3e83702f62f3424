"""`make addon`: every zip carries what every Python it claims needs, and the extension
installs, enables and runs its own monitor in real bpy 5.0.1 (Python 3.11) and 5.3.0
(Python 3.13) from its wheels alone. Blender's own validator does not notice a missing
wheel, so the first test does; the support matrix in docs/blender.md rests on these."""
from __future__ import annotations

import ast
import email.parser
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging import tags as ptags
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.addon_build import FAKE_CONFIG, ROOT, bpy_python, dist, zip_path
from tests.fakes.base import free_port
from tests.fakes.comfyui import FakeComfyUI

MANIFEST = tomllib.loads((ROOT / "blender_ui" / "blender_manifest.toml").read_text())
# What each package claims (docs/blender.md): the extension serves Blender 4.2-5.0 (3.11) and
# 5.1-5.3 (3.13); the legacy zip Blender 3.4-4.0 (3.10) and 4.1 (3.11).
CLAIMS = {"extension": ("3.11", "3.13"), "legacy": ("3.10", "3.11")}
PLATFORM_ENV = {  # what packaging's markers see on each Blender platform
    "windows_x64": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt", "platform_machine": "AMD64"},
    "macos_arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "arm64"},
    "macos_x64": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "x86_64"},
    "linux_x64": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"},
}
# The platform tags each Blender platform accepts: Windows x64; macOS 11+ (arm64 and Intel);
# Linux x86-64 with glibc 2.28+ (what Blender 4.x requires; the matrix states it for 3.x too).
PLATFORM_TAGS = {
    "windows_x64": ["win_amd64"],
    "macos_arm64": list(ptags.mac_platforms((11, 0), "arm64")),
    "macos_x64": list(ptags.mac_platforms((11, 0), "x86_64")),
    "linux_x64": [f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)]
                 + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"],
}
BLENDER_MODULES = {"bpy", "addon_utils", "bl_ui", "bl_operators", "mathutils", "gpu", "blf", "bgl", "bmesh"}
OWN = {"bus", "aggregator", "probes", "blender_ui"}
STDLIB = set(sys.stdlib_module_names)


def _python_tags(python: str, platform: str) -> set[ptags.Tag]:
    version = tuple(int(p) for p in python.split("."))
    plats = PLATFORM_TAGS[platform]
    return (set(ptags.cpython_tags(python_version=version, platforms=plats))
            | set(ptags.compatible_tags(python_version=version, interpreter=f"cp{version[0]}{version[1]}",
                                        platforms=plats)))


def _metadata(data: bytes) -> tuple[email.message.Message, set[str]]:
    """A wheel's METADATA and the top-level import names it provides."""
    with zipfile.ZipFile(io.BytesIO(data)) as whl:
        names = whl.namelist()
        meta = next(n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        tops = set()
        for n in names:
            first = n.split("/", 1)[0]
            if first.endswith((".dist-info", ".data")):
                continue
            tops.add(first[:-3] if "/" not in n and first.endswith(".py") else first.split(".")[0])
        return email.parser.Parser().parsestr(whl.read(meta).decode()), tops


def _imports(zf: zipfile.ZipFile, prefix: str, python: str) -> dict[str, str]:
    """Every third-party module the add-on's, the aggregator's and the probes' code in the
    zip imports (top-level name -> a file importing it), for `python`."""
    need: dict[str, str] = {}
    for name in zf.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(zf.read(name))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top == "tomli" and python >= "3.11":
                    continue  # bus/config.py imports it only where tomllib is missing (3.10)
                if top == "tomllib" and python < "3.11":
                    continue  # ... and tomllib only from 3.11
                if top == "numpy" and name[len(prefix):].split("/")[0] not in ("bus", "aggregator", "probes"):
                    continue  # every Blender's Python ships numpy; the monitor's children do not get it
                if top not in STDLIB and top not in OWN and top not in BLENDER_MODULES:
                    need.setdefault(top, name)
    return need


def _chosen(zf: zipfile.ZipFile, wheels: list[str], python: str, platform: str) -> dict[str, tuple[str, Version]]:
    """The wheels Blender (extension) or deps.py (legacy) installs for `python`: the newest
    per distribution among those whose tags and Requires-Python fit."""
    accepted = _python_tags(python, platform)
    chosen: dict[str, tuple[str, Version]] = {}
    for name in wheels:
        dist_name, version, _build, wtags = parse_wheel_filename(name.rsplit("/", 1)[1])
        if not (wtags & accepted):
            continue
        meta, _ = _metadata(zf.read(name))
        if meta.get("Requires-Python") and not SpecifierSet(meta["Requires-Python"]).contains(f"{python}.0"):
            continue
        key = canonicalize_name(dist_name)
        if key not in chosen or version > chosen[key][1]:
            chosen[key] = (name, version)
    return chosen


def _blender_ext_module():
    spec = importlib.util.find_spec("bpy")
    path = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))[-1]
    mod_spec = importlib.util.spec_from_file_location("_blender_ext_for_test", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind", ["extension", "legacy"])
@pytest.mark.parametrize("platform", list(PLATFORM_ENV))
def test_every_zip_resolves_every_import_for_every_python_it_claims(kind, platform):
    path = zip_path(kind, platform)
    with zipfile.ZipFile(path) as zf:
        prefix = "" if kind == "extension" else f"{MANIFEST['id']}/"
        names = set(zf.namelist())
        for f in ("__init__.py", "deps.py", "bus/client.py", "aggregator/__main__.py", "probes/__main__.py"):
            assert prefix + f in names, (path.name, f)
        assert f"{prefix}build.py" not in names and not any("__pycache__" in n for n in names)
        assert (f"{prefix}blender_manifest.toml" in names) == (kind == "extension")
        wheels = sorted(n for n in names if n.startswith(f"{prefix}wheels/") and n.endswith(".whl"))
        for whl in wheels:  # nothing for another platform, nothing for a Python not claimed
            _n, _v, _b, wtags = parse_wheel_filename(whl.rsplit("/", 1)[1])
            assert any(wtags & _python_tags(py, platform) for py in CLAIMS[kind]), (path.name, whl)
        for python in CLAIMS[kind]:
            chosen = _chosen(zf, wheels, python, platform)
            provided = {top: key for key, (whl, _) in chosen.items() for top in _metadata(zf.read(whl))[1]}
            for module, importer in _imports(zf, prefix, python).items():
                assert module in provided, f"{path.name} on Python {python}: {importer} imports {module}, no wheel has it"
            # Every dependency of every installed wheel, as pip would resolve it there.
            env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   **PLATFORM_ENV[platform], "extra": ""}
            for key, (whl, _) in chosen.items():
                for line in _metadata(zf.read(whl))[0].get_all("Requires-Dist") or []:
                    req = Requirement(line)
                    if req.marker is None or req.marker.evaluate(env):
                        dep = canonicalize_name(req.name)
                        assert dep in chosen, f"{path.name} on {python}: {whl} needs {req}"
                        assert req.specifier.contains(chosen[dep][1], prereleases=True), (path.name, python, str(req))
        if kind == "extension":
            listed = tomllib.loads(zf.read("blender_manifest.toml").decode())
            generated = listed["build"]["generated"]  # Blender's split build: this platform's wheels
            assert generated["platforms"] == [platform.replace("_", "-")]
            assert sorted(generated["wheels"]) == sorted(f"./{w}" for w in wheels)
            assert "network" in listed["permissions"]
            # The Pythons Blender itself derives from the wheels: exactly the ones claimed, so a
            # Blender with any other Python refuses the zip instead of failing at import.
            versions = _blender_ext_module().python_versions_from_wheels(wheels)
            assert versions == {tuple(int(p) for p in py.split(".")) for py in CLAIMS[kind]}, versions


INSTALL = textwrap.dedent(r'''
    import json, os, sys, time
    import bpy, addon_utils
    got = {"python": list(sys.version_info[:2]), "bpy": list(bpy.app.version)}
    name = "bl_ext.user_default.movie_director_health"
    try:
        bpy.ops.extensions.package_install_files(filepath=os.environ["MD_TEST_ZIP"], repo="user_default",
                                                 enable_on_install=True)
        import psutil  # from the extension's own wheels (the bpy 5.3 venv has none)
        me = psutil.Process()
        mod = sys.modules.get(name)
        from bl_ext.user_default.movie_director_health import deps
        pkg = [m for n, m in list(sys.modules.items()) if n.startswith(name + ".") and m is not None]
        ticks = [m.tick for m in pkg if callable(getattr(m, "tick", None)) and bpy.app.timers.is_registered(m.tick)]
        got.update(enabled=mod is not None, bus=deps.BUS_PACKAGE, missing=deps.MISSING, ticks=len(ticks),
                   backend=str(deps.BACKEND_ROOT), zmq=sys.modules["zmq"].__file__,
                   classes=sorted(n for n in dir(bpy.types) if n.startswith("MOVIE_DIRECTOR_")))
        p = bpy.context.preferences.addons[name].preferences
        p.events, p.snapshots, p.requests = (os.environ["MD_HEALTH_EVENTS"], os.environ["MD_HEALTH_SNAPSHOTS"],
                                             os.environ["MD_HEALTH_REQUESTS"])
        got["start"] = list(bpy.ops.movie_director.start_monitor())
        children = me.children(recursive=True)
        got["children"] = [(c.cwd(), c.cmdline()[0]) for c in children]
        env = deps.child_environment(sys.executable)
        got["child_path"] = env["PYTHONPATH"].split(os.pathsep)
        state = bpy.context.window_manager.movie_director_health
        deadline = time.monotonic() + float(os.environ["MD_TEST_TIMEOUT"])
        seen = ""
        while time.monotonic() < deadline:
            ticks[0]()  # the timer, as Blender would call it (timers never fire in the bpy module)
            comfy = state.services.get("comfyui")
            seen = comfy.state if comfy else ""
            if seen == "connected":
                break
            time.sleep(0.05)
        got["comfyui"] = seen
        bpy.ops.preferences.addon_disable(module=name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]:
            time.sleep(0.05)
        got["left_children"] = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        got["left_timers"] = [bool(bpy.app.timers.is_registered(t)) for t in ticks]
        got["left_classes"] = sorted(n for n in dir(bpy.types) if n.startswith("MOVIE_DIRECTOR_"))
        got["left_sockets"] = [str(c.laddr) for c in me.net_connections(kind="inet")]
    except Exception:
        import traceback
        got["error"] = traceback.format_exc()
    print("RESULT", json.dumps(got))
''')


@pytest.mark.parametrize("python, blender", [("3.11", (5, 0)), ("3.13", (5, 3))])
def test_extension_runs_its_monitor_from_its_wheels_in_bpy(python, blender, tmp_path, endpoints):
    """Install the linux zip as an extension into a throw-away user folder, in a fresh
    process (bpy reads its user folders at import); "Start Local Monitor" runs the
    aggregator and probes copied into the extension on Blender's own interpreter from the
    zip's wheels (the bpy 5.3 venv has no pyzmq, msgpack, psutil ... at all), the timer
    shows the fake ComfyUI connected, and disabling leaves nothing behind."""
    interpreter = bpy_python(python)
    script = tmp_path / "install.py"
    script.write_text(INSTALL)
    (tmp_path / "config.toml").write_text(FAKE_CONFIG)
    with FakeComfyUI() as fake:
        env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user"), "MD_TEST_ZIP": str(zip_path("extension")),
               "MD_HEALTH_COMFYUI_URL": fake.url, "MD_HEALTH_WHEEL_CACHE": str(tmp_path / "wheel-cache"),
               "MD_TEST_TIMEOUT": "90"}
        result = subprocess.run([interpreter, "-I", str(script)], capture_output=True, text=True, timeout=240,
                                env=env, cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert "error" not in got, got["error"] + result.stderr[-3000:]
    assert got["python"] == [int(p) for p in python.split(".")] and tuple(got["bpy"][:2]) == blender
    assert got["enabled"] and got["ticks"] == 1 and not got["missing"]
    assert "MOVIE_DIRECTOR_PT_connection_status" in got["classes"]
    assert got["bus"] == "bl_ext.user_default.movie_director_health.bus"  # the bundled copy, not the repo's
    assert got["backend"].startswith(str(tmp_path / "user"))
    if python == "3.13":  # that venv has no pyzmq: Blender installed the zip's for itself
        assert str(tmp_path / "user") in got["zmq"]
    assert got["start"] == ["FINISHED"]
    assert len(got["children"]) == 2 and all(cwd == got["backend"] for cwd, _ in got["children"]), got["children"]
    # The children's path: the add-on's folder, then the zip's wheels (unpacked into the cache).
    assert got["child_path"][0] == got["backend"]
    assert got["child_path"][1:] and all(p.startswith(str(tmp_path / "wheel-cache")) or p.startswith(got["backend"])
                                         for p in got["child_path"][1:]), got["child_path"]
    logs = "".join(p.read_text()[-3000:] for p in (tmp_path / "user").glob("**/monitor.log"))
    assert got["comfyui"] == "connected", (got, logs)
    assert got["left_children"] == [] and got["left_timers"] == [False]
    assert got["left_classes"] == [] and got["left_sockets"] == []


@pytest.mark.skipif(not shutil.which("blender"), reason="needs Debian's blender (.ci/run installs it)")
def test_legacy_zip_installs_and_enables_in_blender_3_4(tmp_path):
    script = tmp_path / "legacy.py"
    script.write_text(f"""
import json, sys, bpy, addon_utils
bpy.ops.preferences.addon_install(filepath={str(zip_path('legacy'))!r})
addon_utils.enable("movie_director_health", default_set=True, handle_error=None)
from movie_director_health import deps
print("RESULT", json.dumps({{"version": list(bpy.app.version), "bus": deps.BUS_PACKAGE, "missing": deps.MISSING,
      "panel": hasattr(bpy.types, "MOVIE_DIRECTOR_PT_health_dashboard")}}))
""")
    env = {**os.environ, "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts"),
           "MD_HEALTH_WHEEL_CACHE": str(tmp_path / "wheel-cache")}
    result = subprocess.run(["blender", "-b", "--factory-startup", "--python", str(script)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert got["version"][:2] == [3, 4]
    assert got["bus"] == "movie_director_health.bus" and not got["missing"]
    assert got["panel"]
