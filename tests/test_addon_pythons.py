"""The legacy zip (Blender 3.4-4.1) on the bare CPython 3.10 and 3.11 those Blenders embed:
nothing installed but the standard library, so everything must come from the zip.

No bpy exists for 3.10 on PyPI, so this runs what can run without it, the way the add-on
runs it: deps.py (which puts the bundled wheels on the path), the add-on's bus copy, and
the local monitor (aggregator and probes as children with deps.child_environment) against
the fake ComfyUI, watched by the add-on's Clone client until it shows ComfyUI connected.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import zipfile

import pytest

from tests.addon_build import FAKE_CONFIG, interpreter, zip_path
from tests.fakes.comfyui import FakeComfyUI

DRIVER = textwrap.dedent(r'''
    import importlib, importlib.util, json, os, subprocess, sys, time
    addons, cache = sys.argv[1], sys.argv[2]
    got = {"python": list(sys.version_info[:2])}
    children = []
    try:
        # The package without its __init__ (that one needs bpy), then the modules that do not.
        folder = os.path.join(addons, "movie_director_health")
        spec = importlib.util.spec_from_file_location("movie_director_health", os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        sys.modules["movie_director_health"] = importlib.util.module_from_spec(spec)
        deps = importlib.import_module("movie_director_health.deps")
        config = importlib.import_module("movie_director_health.bus.config")
        cfg = config.load(text="[services.comfyui]\ninterval = 0.5\n")
        got.update(missing=deps.MISSING, bus=deps.BUS_PACKAGE, interval=cfg.services["comfyui"]["interval"],
                   toml=sorted(m for m in ("tomllib", "tomli") if m in sys.modules),
                   modules={m: sys.modules[m].__file__ for m in ("zmq", "msgpack")})
        # Every file the zip carries compiles on this Python (no 3.11+ syntax anywhere).
        got["syntax_errors"] = []
        for root, _dirs, files in os.walk(folder):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    try:
                        compile(open(path, encoding="utf-8").read(), path, "exec")
                    except SyntaxError as exc:
                        got["syntax_errors"].append(f"{path}: {exc}")
        env = deps.child_environment(sys.executable)
        got["child_path"] = env["PYTHONPATH"].split(os.pathsep)
        # What the children import, resolved the way they resolve it.
        probe = ("import json, zmq, msgpack, psutil, websockets, ddsketch, prometheus_client, platformdirs;"
                 "import bus.config, aggregator.server, probes.comfyui;"
                 "print(json.dumps({m.__name__: m.__file__ for m in (zmq, msgpack, psutil, websockets, ddsketch, "
                 "prometheus_client, platformdirs, bus.config, aggregator.server, probes.comfyui)}))")
        out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=str(deps.BACKEND_ROOT),
                             capture_output=True, text=True, timeout=120)
        got["child_modules"] = json.loads(out.stdout) if out.returncode == 0 else out.stderr[-2000:]
        log = open(os.path.join(os.environ["MD_TEST_OUT"], "monitor.log"), "w")
        for args in (["-m", "aggregator", "run"], ["-m", "probes", "run-all"]):
            children.append(deps.lifeline.spawn([sys.executable, *args], env=env, cwd=str(deps.BACKEND_ROOT),
                                                stdout=log, stderr=subprocess.STDOUT))
        ep = deps.sockets.Endpoints.from_env()
        client = deps.client.MonitorClient(ep, name="legacy-test")
        deadline = time.monotonic() + float(os.environ["MD_TEST_TIMEOUT"])
        while time.monotonic() < deadline:
            client.poll(timeout_ms=50)
            if client.online and client.has_snapshot and client.services.get("comfyui", {}).get("state") == "connected":
                break
        got["comfyui"] = client.services.get("comfyui", {}).get("state")
        got["snapshot"] = bool(client.has_snapshot)
        client.close()
    except Exception:
        import traceback
        got["error"] = traceback.format_exc()
    finally:
        for proc in children:
            deps.lifeline.stop(proc, grace=5.0)
        got["exit_codes"] = [p.poll() for p in children]
    print("RESULT", json.dumps(got))
''')


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_legacy_zip_runs_its_monitor_on_a_bare_python(version, tmp_path, endpoints, isolated_env):
    python = interpreter(version)
    addons = tmp_path / "addons"
    with zipfile.ZipFile(zip_path("legacy")) as zf:
        zf.extractall(addons)
    (isolated_env / "config.toml").write_text(FAKE_CONFIG)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cache = tmp_path / "wheel-cache"
    with FakeComfyUI() as fake:
        env = {**os.environ, "MD_HEALTH_COMFYUI_URL": fake.url, "MD_HEALTH_WHEEL_CACHE": str(cache),
               "MD_TEST_OUT": str(tmp_path), "MD_TEST_TIMEOUT": "90"}
        result = subprocess.run([python, "-I", str(script), str(addons), str(cache)], capture_output=True,
                                text=True, timeout=240, env=env, cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    log = (tmp_path / "monitor.log").read_text()[-3000:] if (tmp_path / "monitor.log").exists() else ""
    assert "error" not in got, got["error"] + log
    assert got["python"] == [int(p) for p in version.split(".")]
    assert got["missing"] == "" and got["bus"] == "movie_director_health.bus"
    assert got["syntax_errors"] == []
    assert got["interval"] == 0.5  # the add-on's config module parses TOML on this Python
    assert got["toml"] == (["tomli"] if version == "3.10" else ["tomllib"])  # tomli only where needed
    backend = str(addons / "movie_director_health")
    # In-process: the binary wheels come unpacked from the cache, never from the add-on folder.
    assert all(path.startswith(str(cache)) for path in got["modules"].values()), got["modules"]
    # The children: the add-on's copies first, then only the zip's wheels.
    assert got["child_path"][0] == backend
    assert all(p.startswith(str(cache)) or p.startswith(os.path.join(backend, "wheels")) for p in got["child_path"][1:])
    mods = got["child_modules"]
    assert isinstance(mods, dict), mods
    for name, path in mods.items():
        assert path.startswith(str(cache)) or path.startswith(backend), (name, path)
    assert got["snapshot"] and got["comfyui"] == "connected", (got, log)
    assert os.listdir(addons) == ["movie_director_health"]  # nothing was written next to the add-on
