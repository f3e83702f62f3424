"""`make addon`: build the Blender add-on packages from this repository.

    python blender_ui/build.py [--out build/addon] [--offline]

Produces in <out>/dist/:
  movie_director_health-<version>-<platform>.zip  extensions for Blender 4.2+ (one per
      platform, built and validated with Blender's own extension tool), each bundling the
      wheels of every runtime dependency in pyproject.toml for that platform;
  movie_director_health-<version>-legacy.zip      the add-on for Blender 3.4-4.1 (no wheels:
      that Blender's Python needs pyzmq and msgpack, see docs/blender.md).

The add-on's folder holds a copy of bus/ (imported as a subpackage through deps.py) and of
aggregator/ and probes/ (run as child processes by "Start Local Monitor"). The copies exist
only in the build output, never in git.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "blender_ui"
PACKAGES = ("bus", "aggregator", "probes")
PYTHON_VERSION = "3.11"  # Blender 4.2 LTS to 5.0 all embed CPython 3.11
# Blender platform -> the pip platform tag (pip also accepts the older compatible tags).
PLATFORMS = {
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_11_0_x86_64",
    "linux-x64": "manylinux_2_28_x86_64",
}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build.py")


def requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


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


def download_wheels(wheel_root: Path, offline: bool) -> dict[str, list[Path]]:
    wheels: dict[str, list[Path]] = {}
    for platform, tag in PLATFORMS.items():
        dest = wheel_root / platform
        dest.mkdir(parents=True, exist_ok=True)
        if not offline:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--platform", tag, "--python-version", PYTHON_VERSION,
                   "--implementation", "cp", "--dest", str(dest), *requirements()]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"build: pip download for {platform} failed:\n{result.stderr[-2000:]}")
        wheels[platform] = sorted(dest.glob("*.whl"))
        if not wheels[platform]:
            sys.exit(f"build: no wheels for {platform} in {dest} (run without --offline)")
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
    parser.add_argument("--offline", action="store_true", help="reuse the wheels downloaded before")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    dist = out / "dist"
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    ident, version = manifest["id"], manifest["version"]

    # The extension: one source folder with every platform's wheels; Blender's tool splits it.
    src = out / "src" / ident
    stage(src, with_manifest=True)
    wheels = download_wheels(out / "wheels", args.offline)
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

    # The legacy add-on: a zip with one top folder, as Blender 3.4-4.1 installs it.
    legacy_src = out / "legacy" / ident
    stage(legacy_src, with_manifest=False)
    legacy = dist / f"{ident}-{version}-legacy.zip"
    with zipfile.ZipFile(legacy, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(legacy_src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(legacy_src.parent).as_posix())
    for z in [*zips, legacy]:
        print(f"{z}  ({z.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
