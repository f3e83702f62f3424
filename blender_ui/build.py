"""`make addon`: build the Blender add-on packages from this repository.

    python blender_ui/build.py [--out build/addon] [--cache build/wheels] [--offline]

Produces in <out>/dist/, for each platform (windows_x64, macos_arm64, macos_x64, linux_x64):
  movie_director_health-<version>-<platform>.zip         the extension for Blender 4.2-5.3, built
      and validated with Blender's own extension tool; it carries the wheels of every runtime
      dependency in pyproject.toml for Python 3.11 (Blender 4.2-5.0) and 3.13 (5.1-5.3), and
      Blender installs the ones matching its Python;
  movie_director_health-<version>-legacy-<platform>.zip  the add-on for Blender 3.4-4.1, with
      the wheels for Python 3.10 (3.4-4.0) and 3.11 (4.1); the add-on puts them on its own
      path (blender_ui/deps.py), nothing is installed by hand.
The support matrix is in docs/blender.md.

The add-on's folder holds a copy of bus/ (imported as a subpackage through deps.py) and of
aggregator/ and probes/ (run as child processes by "Start Local Monitor"). The copies exist
only in the build output, never in git. Downloaded wheels are kept in the cache folder, one
subfolder per platform and Python, so a repeated build downloads nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "blender_ui"
PACKAGES = ("bus", "aggregator", "probes")
# The CPython each Blender line embeds (docs/blender.md has the table).
EXTENSION_PYTHONS = ("3.11", "3.13")  # 4.2 LTS-5.0: 3.11; 5.1-5.3: 3.13
LEGACY_PYTHONS = ("3.10", "3.11")     # 3.4 LTS-4.0: 3.10; 4.1: 3.11
# Blender platform -> the pip platform tag (pip also accepts the older compatible tags:
# manylinux_2_28 takes manylinux2014 too, macosx_11_0 takes 10.x).
PLATFORMS = {
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_11_0_x86_64",
    "linux-x64": "manylinux_2_28_x86_64",
}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build.py")


def requirements(python: str) -> list[str]:
    """pyproject's runtime dependencies that apply on `python` (markers evaluated for that
    version, not for the Python running the build), without their markers."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    out = []
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def blender_ext() -> list[str]:
    """Blender's extension tool: `blender --command extension` if a 4.2+ blender is on PATH
    is not assumed; the copy inside the bpy wheel runs with plain Python."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("build: the bpy module (pip install bpy) is needed for Blender's extension tool")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        sys.exit("build: blender_ext.py not found inside the bpy module")
    return [sys.executable, str(found[-1])]


def stage(dest: Path, with_manifest: bool) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ADDON, dest, ignore=IGNORE)
    if not with_manifest:
        (dest / "blender_manifest.toml").unlink()
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=IGNORE)


def _download(dest: Path, tag: str, python: str, offline: bool) -> list[Path]:
    """The wheels for one platform and one Python, from the cache if it is complete for
    exactly these requirements."""
    reqs = requirements(python)
    stamp = dest / ".complete"
    key = json.dumps({"platform": tag, "python": python, "requirements": reqs})
    if not (stamp.is_file() and stamp.read_text() == key):
        if offline:
            sys.exit(f"build: no cached wheels for {tag} / Python {python} in {dest} (run without --offline)")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        abi = "cp" + python.replace(".", "")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--platform", tag, "--python-version", python,
               "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
               "--dest", str(dest), *reqs]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"build: pip download for {tag} / Python {python} failed:\n{result.stderr[-2000:]}")
        stamp.write_text(key)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        sys.exit(f"build: no wheels for {tag} / Python {python} in {dest}")
    return wheels


def download_wheels(cache: Path, pythons: tuple[str, ...], offline: bool) -> dict[str, list[Path]]:
    """Blender platform -> the wheels of every runtime dependency for each of `pythons`."""
    jobs = {(platform, py): (cache / f"{platform}-cp{py.replace('.', '')}", tag, py)
            for platform, tag in PLATFORMS.items() for py in pythons}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        done = {key: pool.submit(_download, *args, offline) for key, args in jobs.items()}
    wheels: dict[str, list[Path]] = {p: [] for p in PLATFORMS}
    for (platform, _py), future in done.items():
        wheels[platform] += future.result()
    return wheels


def write_manifest(src: Path, wheel_names: list[str]) -> None:
    manifest = src / "blender_manifest.toml"
    text = manifest.read_text()
    listing = "wheels = [\n" + "".join(f'  "./wheels/{name}",\n' for name in wheel_names) + "]"
    text, n = re.subn(r"^wheels = \[\]$", listing, text, flags=re.M)
    if n != 1:
        sys.exit("build: blender_manifest.toml must contain the line `wheels = []`")
    manifest.write_text(text)


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"build: {' '.join(cmd[1:3])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "addon"), help="output folder")
    parser.add_argument("--cache", default=str(ROOT / "build" / "wheels"), help="downloaded wheels")
    parser.add_argument("--offline", action="store_true", help="use only the wheels downloaded before")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    cache = Path(args.cache).resolve()
    dist = out / "dist"
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    ident, version = manifest["id"], manifest["version"]

    # The extension: one source folder with every platform's wheels; Blender's tool splits it.
    src = out / "src" / ident
    stage(src, with_manifest=True)
    wheels = download_wheels(cache, EXTENSION_PYTHONS, args.offline)
    (src / "wheels").mkdir()
    names = set()
    for files in wheels.values():
        for whl in files:
            shutil.copy2(whl, src / "wheels" / whl.name)
            names.add(whl.name)
    write_manifest(src, sorted(names))
    tool = blender_ext()
    run(tool + ["build", "--source-dir", str(src), "--output-dir", str(dist), "--split-platforms"])
    zips = sorted(dist.glob(f"{ident}-{version}-*.zip"))
    if len(zips) != len(PLATFORMS):
        sys.exit(f"build: expected {len(PLATFORMS)} platform zips, got {[z.name for z in zips]}")
    for z in zips:
        run(tool + ["validate", str(z)])

    # The legacy add-on: per platform, a zip with one top folder, as Blender 3.4-4.1 installs it.
    legacy_wheels = download_wheels(cache, LEGACY_PYTHONS, args.offline)
    legacy_zips = []
    for platform, files in legacy_wheels.items():
        legacy_src = out / "legacy" / platform / ident
        stage(legacy_src, with_manifest=False)
        (legacy_src / "wheels").mkdir()
        for whl in files:
            shutil.copy2(whl, legacy_src / "wheels" / whl.name)
        legacy = dist / f"{ident}-{version}-legacy-{platform.replace('-', '_')}.zip"
        with zipfile.ZipFile(legacy, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(legacy_src.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(legacy_src.parent).as_posix())
        legacy_zips.append(legacy)
    for z in [*zips, *legacy_zips]:
        print(f"{z}  ({z.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
