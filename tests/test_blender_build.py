"""`make addon`: the extension zips carry every wheel they need, and both kinds of package
install and enable in a real Blender (bpy 5.0.1 as an extension, Debian's 3.4 as a legacy
add-on). Blender's own validator does not notice a missing wheel, so this test does."""
from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_ENV = {  # what packaging's markers see on each Blender platform
    "windows_x64": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt", "platform_machine": "AMD64"},
    "macos_arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "arm64"},
    "macos_x64": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "x86_64"},
    "linux_x64": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"},
}
PLATFORM_OK = {  # a wheel's platform tag must be one of these families
    "windows_x64": ("win_amd64", "any"),
    "macos_arm64": ("macosx_", "any"),
    "macos_x64": ("macosx_", "any"),
    "linux_x64": ("manylinux", "any"),
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("addon")
    result = subprocess.run([sys.executable, str(ROOT / "blender_ui" / "build.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "dist"


def _cp(interpreter: str) -> tuple[int, int]:
    """"cp37" -> (3, 7), "cp311" -> (3, 11)."""
    return int(interpreter[2]), int(interpreter[3:] or 0)


def _wheel_metadata(zf: zipfile.ZipFile, name: str) -> email.message.Message:
    import io
    with zipfile.ZipFile(io.BytesIO(zf.read(name))) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(whl.read(meta).decode())


def test_every_platform_zip_has_every_wheel_it_needs(dist):
    manifest = tomllib.loads((ROOT / "blender_ui" / "blender_manifest.toml").read_text())
    needed = {canonicalize_name(Requirement(r).name)
              for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {"pyzmq", "msgpack"} <= needed
    for platform, extra_env in PLATFORM_ENV.items():
        path = dist / f"{manifest['id']}-{manifest['version']}-{platform}.zip"
        with zipfile.ZipFile(path) as zf:
            wheels = [n for n in zf.namelist() if n.startswith("wheels/") and n.endswith(".whl")]
            have = {}
            for name in wheels:
                dist_name, _ver, _build, tags = parse_wheel_filename(name.split("/", 1)[1])
                have[canonicalize_name(dist_name)] = name
                # Some tag of it fits CPython 3.11 (or any Python 3) on this platform.
                assert any((t.interpreter in ("cp311", "py3") or (t.abi == "abi3" and _cp(t.interpreter) <= (3, 11)))
                           and t.platform.startswith(PLATFORM_OK[platform]) for t in tags), (platform, name)
            assert needed <= set(have), f"{platform}: missing wheels for {needed - set(have)}"
            # Every dependency of every bundled wheel, as pip would resolve it on that platform.
            env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.9",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", **extra_env}
            for name in wheels:
                for line in _wheel_metadata(zf, name).get_all("Requires-Dist") or []:
                    req = Requirement(line)
                    if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                        assert canonicalize_name(req.name) in have, f"{platform}: {name} needs {req.name}"
            listed = tomllib.loads(zf.read("blender_manifest.toml").decode())
            # Blender's split build records this platform's wheels in [build.generated].
            generated = listed["build"]["generated"]
            assert generated["platforms"] == [platform.replace("_", "-")]
            assert sorted(generated["wheels"]) == sorted(f"./{w}" for w in wheels)
            assert "network" in listed["permissions"]
            # The add-on travels with its bus copy and the monitor's packages.
            names = set(zf.namelist())
            for f in ("__init__.py", "deps.py", "bus/client.py", "aggregator/__main__.py", "probes/__main__.py"):
                assert f in names, (platform, f)
            assert "build.py" not in names and not any("__pycache__" in n for n in names)


def test_extension_installs_enables_and_runs_its_monitor_in_blender_5(dist, tmp_path, endpoints):
    """Install the linux zip as an extension into a throw-away user folder, in a fresh
    process (bpy reads its user folders at import); then "Start Local Monitor" runs the
    aggregator and probes copied into the extension, and disabling stops them."""
    script = tmp_path / "install.py"
    script.write_text(f"""
import json, sys, time, bpy, addon_utils, psutil
zip_path = {str(next(dist.glob('*-linux_x64.zip')))!r}
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
name = "bl_ext.user_default.movie_director_health"
mod = sys.modules.get(name)
from bl_ext.user_default.movie_director_health import deps, runtime
got = {{"enabled": mod is not None, "bus": deps.BUS_PACKAGE, "missing": deps.MISSING,
       "panel": hasattr(bpy.types, "MOVIE_DIRECTOR_PT_connection_status"),
       "timer": bpy.app.timers.is_registered(runtime.tick), "backend": str(deps.BACKEND_ROOT)}}
p = bpy.context.preferences.addons[name].preferences
p.events, p.snapshots, p.requests = {endpoints.events!r}, {endpoints.snapshots!r}, {endpoints.requests!r}
got["start"] = list(bpy.ops.movie_director.start_monitor())
children = [psutil.Process(c.pid) for c in runtime.RT.children.values()]
got["children_cwd"] = [c.cwd() for c in children]
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (runtime.RT.client.online and runtime.RT.client.has_snapshot):
    runtime.tick()
    time.sleep(0.05)
got["online"] = runtime.RT.client.online
bpy.ops.preferences.addon_disable(module=name)
got["left"] = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
print("RESULT", json.dumps(got))
""")
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                            env=env, cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert got["enabled"] and got["panel"] and got["timer"] and not got["missing"]
    assert got["bus"] == "bl_ext.user_default.movie_director_health.bus"  # the bundled copy, not the repo's
    assert str(tmp_path / "user") in got["backend"]
    assert got["start"] == ["FINISHED"] and got["children_cwd"] == [got["backend"]] * 2
    assert got["online"], "the aggregator started from the extension never answered"
    assert got["left"] == []


@pytest.mark.skipif(not shutil.which("blender"), reason="needs Debian's blender (.ci/run installs it)")
def test_legacy_zip_installs_and_enables_in_blender_3_4(dist, tmp_path):
    script = tmp_path / "legacy.py"
    script.write_text(f"""
import json, sys, bpy, addon_utils
bpy.ops.preferences.addon_install(filepath={str(next(dist.glob('*-legacy.zip')))!r})
addon_utils.enable("movie_director_health", default_set=True, handle_error=None)
from movie_director_health import deps, runtime
print("RESULT", json.dumps({{"version": list(bpy.app.version), "bus": deps.BUS_PACKAGE, "missing": deps.MISSING,
      "panel": hasattr(bpy.types, "MOVIE_DIRECTOR_PT_health_dashboard"),
      "timer": bpy.app.timers.is_registered(runtime.tick)}}))
""")
    env = {**os.environ, "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts")}
    result = subprocess.run(["blender", "-b", "--factory-startup", "--python", str(script)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert got["version"][:2] == [3, 4]
    assert got["bus"] == "movie_director_health.bus" and not got["missing"]
    assert got["panel"] and got["timer"]
