"""blender_ui/deps.py's wheel cache: binary wheels are unpacked once per content (keyed by
SHA-256), atomically even when processes race, the cache stays bounded, and a wheel that
would write outside its folder is refused. Runs the legacy zip's own deps.py in real
subprocesses (deps imports the add-on's bus copy at import, as in Blender)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from tests.addon_build import zip_path

HEADER = textwrap.dedent(r'''
    import importlib, importlib.util, json, os, sys
    from pathlib import Path
    addons = sys.argv[1]
    folder = os.path.join(addons, "movie_director_health")
    spec = importlib.util.spec_from_file_location("movie_director_health", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    sys.modules["movie_director_health"] = importlib.util.module_from_spec(spec)
    deps = importlib.import_module("movie_director_health.deps")
''')


@pytest.fixture(scope="module")
def addons(tmp_path_factory):
    folder = tmp_path_factory.mktemp("addons")
    with zipfile.ZipFile(zip_path("legacy")) as zf:
        zf.extractall(folder)
    return folder


def _run(addons, cache, body: str, *args: str) -> dict:
    script = HEADER + textwrap.dedent(body)
    env = {**os.environ, "MD_HEALTH_WHEEL_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-I", "-c", script, str(addons), *args], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _binary_wheel(addons) -> str:
    wheels = sorted((addons / "movie_director_health" / "wheels").glob(f"pyzmq-*-cp{sys.version_info[0]}{sys.version_info[1]}-*.whl"))
    assert wheels
    return str(wheels[0])


def test_a_wheel_is_unpacked_once_per_content_and_reused(addons, tmp_path):
    cache = tmp_path / "cache"
    whl = _binary_wheel(addons)
    changed = tmp_path / os.path.basename(whl)
    changed.write_bytes(open(whl, "rb").read())
    with zipfile.ZipFile(changed, "a") as zf:
        zf.comment = b"another build of the same name"  # same file name, other bytes
    got = _run(addons, cache, '''
        first = deps.extracted(Path(sys.argv[2]))
        marker = first / "zmq" / "__init__.py"
        before = marker.stat().st_mtime_ns
        again = deps.extracted(Path(sys.argv[2]))
        other = deps.extracted(Path(sys.argv[3]))
        print(json.dumps({"first": str(first), "again": str(again), "other": str(other),
                          "untouched": marker.stat().st_mtime_ns == before,
                          "entries": sorted(os.listdir(deps.cache_root()))}))
    ''', whl, str(changed))
    assert got["first"] == got["again"] and got["untouched"]
    assert got["other"] != got["first"]  # keyed by content, not by name
    # deps unpacked this Python's binary wheels at import (the same pyzmq among them), plus the changed one.
    assert len([e for e in got["entries"] if e.startswith("pyzmq-")]) == 2, got["entries"]


def test_processes_racing_to_unpack_the_same_wheel_all_get_one_complete_folder(addons, tmp_path):
    cache = tmp_path / "cache"
    whl = _binary_wheel(addons)
    script = HEADER + "print(json.dumps(str(deps.extracted(Path(sys.argv[2])))))\n"
    env = {**os.environ, "MD_HEALTH_WHEEL_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-I", "-c", script, str(addons), whl], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    paths = {json.loads(out.strip().splitlines()[-1]) for out, _ in results}
    assert len(paths) == 1
    # deps itself unpacked the wheels it needed at import; this one is among them, once.
    entries = os.listdir(cache)
    assert not [e for e in entries if e.endswith(".tmp")]
    assert len([e for e in entries if e.startswith("pyzmq-")]) == 1
    assert (cache / os.path.basename(paths.pop()) / ".complete").is_file()


def test_the_cache_is_bounded_and_keeps_what_is_in_use(addons, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = time.time() - 40 * 86400
    for i in range(70):  # left by other add-on versions: some stale, many recent
        entry = cache / f"old-{i:02d}"
        entry.mkdir()
        (entry / ".complete").write_text("x")
        stamp = old if i < 10 else time.time() - 3600 - i
        os.utime(entry / ".complete", (stamp, stamp))
    got = _run(addons, cache, '''
        dest = deps.extracted(Path(sys.argv[2]))
        print(json.dumps({"dest": dest.name, "entries": sorted(os.listdir(deps.cache_root()))}))
    ''', _binary_wheel(addons))
    entries = got["entries"]
    assert got["dest"] in entries and len(entries) <= 64
    assert not any(e in entries for e in (f"old-{i:02d}" for i in range(10)))  # unused for 40 days: gone
    assert {e.split("-")[0] for e in entries if not e.startswith("old-")} >= {"pyzmq", "msgpack", "psutil"}


def test_a_wheel_that_would_write_outside_its_folder_is_refused(addons, tmp_path):
    evil = tmp_path / "evil-1.0-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    cache = tmp_path / "cache"
    got = _run(addons, cache, '''
        try:
            deps.extracted(Path(sys.argv[2]))
            print(json.dumps({"error": ""}))
        except ValueError as exc:
            print(json.dumps({"error": str(exc)}))
    ''', str(evil))
    assert "unsafe path" in got["error"]
    assert not (tmp_path / "outside.txt").exists() and not any(p.name == "outside.txt" for p in tmp_path.rglob("*"))


SYSTEMS = {"windows_x64": ("win32", "AMD64"), "macos_arm64": ("darwin", "arm64"), "macos_x64": ("darwin", "x86_64"),
           "linux_x64": ("linux", "x86_64")}


def test_deps_picks_the_wheels_packaging_tags_accept_on_every_platform_and_python(addons, tmp_path):
    """deps.wheel_fits is what runs inside Blender on Windows and macOS too, where these tests
    cannot run a Blender: for every wheel of every zip and every Python a zip claims, it must
    agree with packaging.tags for that platform."""
    from tests.test_blender_build import CLAIMS, _python_tags
    from packaging.utils import parse_wheel_filename

    cases = []
    for platform, (system, machine) in SYSTEMS.items():
        for kind in ("extension", "legacy"):
            with zipfile.ZipFile(zip_path(kind, platform)) as zf:
                names = [n.rsplit("/", 1)[1] for n in zf.namelist() if n.endswith(".whl")]
            for python in CLAIMS["extension"] + CLAIMS["legacy"]:
                for name in names:
                    expected = bool(parse_wheel_filename(name)[3] & _python_tags(python, platform))
                    cases.append([name, python, system, machine, expected])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    got = _run(addons, tmp_path / "cache", '''
        cases = json.load(open(sys.argv[2]))
        print(json.dumps([[c[0], c[1], c[2], deps.wheel_fits(c[0], tuple(int(p) for p in c[1].split(".")), c[2], c[3])]
                          for c in cases]))
    ''', str(tmp_path / "cases.json"))
    wrong = [(c[0], c[1], c[2], c[4]) for c, g in zip(cases, got) if g[3] != c[4]]
    assert len(got) == len(cases) > 100 and wrong == []
