"""The one place the add-on imports the bus package from, and where its bundled wheels live.

Built add-on (`make addon`): the build copies the repository's `bus/`, `aggregator/` and
`probes/` into the add-on, and `wheels/` holds the wheels of every runtime dependency for
the Pythons the zip serves. Running from the repository there are no copies and no wheels:
the top-level `bus` and the interpreter's own packages are used.

Two packagings, one rule for the wheels:
- extension (Blender 4.2+, has blender_manifest.toml): Blender itself installs the wheels
  matching its Python into its extensions site-packages, for the add-on's own process;
- legacy zip (Blender 3.4-4.1): nobody installs anything, so this module puts the wheels
  matching this Python at the end of sys.path (never shadowing what Blender or another
  add-on already has).
Either way the local monitor's children (deps.child_environment) run from the add-on's
copies and these wheels only. Pure-Python wheels are imported from the .whl file itself
(zipimport); binary ones (pyzmq, msgpack, psutil, websockets) cannot load from a zip, so
they are extracted once into a per-user cache directory, one folder per wheel keyed by its
SHA-256, never into the add-on's own folder (an extension's folder is Blender's to replace).

pyzmq and msgpack may still be missing (no wheel fits this Python, or a copy of the add-on
without wheels): the add-on then registers anyway and says what is wrong.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import platform
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

ADDON_DIR = Path(__file__).resolve().parent
WHEELS_DIR = ADDON_DIR / "wheels"
IS_EXTENSION = (ADDON_DIR / "blender_manifest.toml").is_file()

CACHE_ENV = "MD_HEALTH_WHEEL_CACHE"   # overrides where binary wheels are extracted (tests)
MAX_WHEEL_BYTES = 256 * 1024 * 1024   # uncompressed size one wheel may unpack to
MAX_CACHE_ENTRIES = 64                # extracted wheels kept (other add-on versions, other Pythons)
CACHE_UNUSED_DAYS = 30                # an entry nobody used for this long is removed


# -- which wheels fit this interpreter -----------------------------------------------------
def wheel_fits(filename: str, version: tuple[int, int] | None = None, system: str | None = None,
               machine: str | None = None) -> bool:
    """Whether a wheel (by its file name's tags, PEP 427) installs on this CPython.

    Each zip carries one platform's wheels, so the platform check is only the OS family
    and the CPU; the Python check is exact: cpXY for CPython X.Y, abi3 from its minimum
    version up, py3 for pure Python."""
    version = version or sys.version_info[:2]
    system = system or sys.platform
    machine = (machine or platform.machine()).lower()
    parts = filename[:-len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        return False
    pythons, abis, platforms = (p.split(".") for p in parts[-3:])
    here = f"cp{version[0]}{version[1]}"

    def python_ok(tag: str) -> bool:
        if tag == here or tag in ("py3", f"py{version[0]}{version[1]}"):
            return True
        if tag.startswith("cp") and "abi3" in abis and tag[2:].isdigit() and tag[2] == str(version[0]):
            return (int(tag[2]), int(tag[3:] or 0)) <= tuple(version)
        return False

    def abi_ok(tag: str) -> bool:
        return tag in ("none", "abi3", here)

    arch = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)

    def platform_ok(tag: str) -> bool:
        if tag == "any":
            return True
        if system == "win32":
            return tag == {"x86_64": "win_amd64", "arm64": "win_arm64"}.get(arch, "win32")
        if system == "darwin":
            return tag.startswith("macosx_") and tag.endswith((f"_{arch}", "_universal2"))
        if system.startswith("linux"):
            return tag.startswith("manylinux") and tag.endswith({"arm64": "_aarch64"}.get(arch, f"_{arch}"))
        return False

    return (any(python_ok(t) for t in pythons) and any(abi_ok(t) for t in abis)
            and any(platform_ok(t) for t in platforms))


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def requires_python_ok(spec: str, version: tuple[int, int]) -> bool:
    """A wheel's Requires-Python (">=3.10", ">=3.8,!=3.9.*,<4") for CPython X.Y: each
    clause compared on the release numbers, enough for what wheels declare."""
    here = tuple(version) + (99,)  # X.Y.any: ">=3.10" holds for 3.10, "<3.10.2" does not matter
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(~=|==|!=|<=|>=|<|>)\s*([\d.]+)(\.\*)?", clause)
        if m is None:
            continue  # a form wheels do not use: do not refuse on it
        op, want, star = m.group(1), _version_key(m.group(2)), m.group(3)
        if star or op in ("==", "!="):
            same = here[:len(want)] == want if star else tuple(version)[:len(want)] == want[:2]
            if (op == "==") != same:
                return False
            continue
        ok = {">=": here >= want, ">": here[:len(want)] > want, "<=": here[:len(want)] <= want,
              "<": here[:len(want)] < want, "~=": here >= want}[op]
        if not ok:
            return False
    return True


def _requires_python(whl: Path) -> str:
    try:
        with zipfile.ZipFile(whl) as zf:
            meta = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            for line in zf.read(meta).decode("utf-8", "replace").splitlines():
                if not line.strip():
                    break  # the headers end at the first empty line
                if line.lower().startswith("requires-python:"):
                    return line.split(":", 1)[1].strip()
    except (OSError, StopIteration, zipfile.BadZipFile):
        pass
    return ""


def bundled_wheels(folder: Path = WHEELS_DIR, version: tuple[int, int] | None = None) -> list[Path]:
    """This zip's wheels that install on the running Python (tags and Requires-Python),
    the newest of each distribution (a legacy zip carries one per Python it serves)."""
    version = version or sys.version_info[:2]
    if not folder.is_dir():
        return []
    chosen: dict[str, Path] = {}
    for whl in folder.glob("*.whl"):
        name, ver = whl.name.split("-")[:2]
        if wheel_fits(whl.name, version) and requires_python_ok(_requires_python(whl), version):
            best = chosen.get(name.lower())
            if best is None or _version_key(ver) > _version_key(best.name.split("-")[1]):
                chosen[name.lower()] = whl
    return [chosen[name] for name in sorted(chosen)]


# -- the extraction cache ------------------------------------------------------------------
def cache_root() -> Path:
    """Per-user cache directory, where the platform keeps such things (what platformdirs'
    user_cache_dir gives; platformdirs may itself be one of the wheels, so not used here)."""
    named = os.environ.get(CACHE_ENV)
    if named:
        return Path(named)
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "movie-director-health" / "Cache"
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches" / "movie-director-health"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "movie-director-health"
    return base / "wheels"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_members(zf: zipfile.ZipFile) -> None:
    total = 0
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename:
            raise ValueError(f"unsafe path {info.filename!r}")
        total += info.file_size
        if total > MAX_WHEEL_BYTES:
            raise ValueError(f"unpacks to more than {MAX_WHEEL_BYTES // 2**20} MiB")


def extracted(whl: Path, root: Path | None = None) -> Path:
    """The folder holding `whl` unpacked: made once (atomically: unpack beside it, then
    rename), then reused by every Blender and every child; safe when two processes race."""
    root = root or cache_root()
    dest = root / f"{whl.name.split('-')[0].lower()}-{_sha256(whl)[:20]}"
    done = dest / ".complete"
    if not done.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{dest.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(whl) as zf:
                _check_members(zf)
                zf.extractall(tmp)
            (tmp / ".complete").write_text(whl.name, encoding="utf-8")
            try:
                os.replace(tmp, dest)
            except OSError:  # another process finished first
                if not done.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        prune(root, keep=dest)
    try:
        os.utime(done)  # "in use": prune() keeps recently used entries
    except OSError:
        pass
    return dest


def prune(root: Path, keep: Path | None = None) -> None:
    """Bound the cache: drop entries unused for CACHE_UNUSED_DAYS, then the least recently
    used beyond MAX_CACHE_ENTRIES, and unpacking left-overs older than a day."""
    now = time.time()
    entries = []
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name.endswith(".tmp"):
            if now - entry.stat().st_mtime > 86400:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        done = entry / ".complete"
        used = done.stat().st_mtime if done.is_file() else 0.0
        entries.append((used, entry))
    entries.sort(reverse=True)
    for rank, (used, entry) in enumerate(entries):
        if entry != keep and (rank >= MAX_CACHE_ENTRIES or now - used > CACHE_UNUSED_DAYS * 86400):
            shutil.rmtree(entry, ignore_errors=True)


def _is_pure(whl: Path) -> bool:
    return whl.name[:-len(".whl")].split("-")[-1] == "any"


_paths: list[str] | None = None


def bundled_paths() -> list[str]:
    """sys.path entries for this zip's wheels on this Python: the .whl itself for pure
    Python, the extracted folder for binary wheels. Computed once per process."""
    global _paths
    if _paths is None:
        _paths = [str(whl) if _is_pure(whl) else str(extracted(whl)) for whl in bundled_wheels()]
    return _paths


def _activate() -> str:
    """Legacy zip only: make the bundled wheels importable in this process."""
    if IS_EXTENSION or not WHEELS_DIR.is_dir():
        return ""
    try:
        paths = bundled_paths()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"cannot unpack the bundled wheels into {cache_root()}: {exc}"
    if not paths:
        return (f"none of the bundled wheels fit Python {sys.version_info[0]}.{sys.version_info[1]} on "
                f"{sys.platform}; use the zip made for this Blender (docs/blender.md)")
    sys.path.extend(p for p in paths if p not in sys.path)
    importlib.invalidate_caches()
    return ""


# -- the bus package -----------------------------------------------------------------------
if importlib.util.find_spec(f"{__package__}.bus") is not None:
    BUS_PACKAGE = f"{__package__}.bus"
    BACKEND_ROOT = ADDON_DIR  # holds bus/, aggregator/ and probes/ for the child processes
else:
    BUS_PACKAGE = "bus"
    BACKEND_ROOT = ADDON_DIR.parent  # the repository root

_WHEEL_PROBLEM = _activate()
try:
    client = importlib.import_module(f"{BUS_PACKAGE}.client")
    sockets = importlib.import_module(f"{BUS_PACKAGE}.sockets")
    lifeline = importlib.import_module(f"{BUS_PACKAGE}.lifeline")
    MISSING = ""
except ImportError as exc:
    client = sockets = lifeline = None
    MISSING = f"{exc}: {_WHEEL_PROBLEM}" if _WHEEL_PROBLEM else (
        f"{exc}. Install pyzmq and msgpack into Blender's Python: \"{sys.executable}\" -m pip install pyzmq msgpack")


# -- the local monitor's children ----------------------------------------------------------
def child_environment(python: str) -> dict[str, str]:
    """Environment for the aggregator and probe children (contract: their only source).

    On Blender's own interpreter (the default) they import the add-on's copies of `bus`,
    `aggregator` and `probes` and this zip's wheels, which come first on their path; no
    user site-packages, and no PYTHON* variable from the user's environment (Blender
    itself ignores them, so its children do too). Whatever Blender's Python has installed
    is never needed (the tests run on interpreters that have none of the packages).
    A different interpreter, chosen in the preferences, keeps its own packages: only the
    backend packages are put in front of them."""
    env = dict(os.environ)
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        for key in [k for k in env if k.startswith("PYTHON")]:
            del env[key]
        paths = [str(BACKEND_ROOT), *bundled_paths()]
        env["PYTHONNOUSERSITE"] = "1"
    else:
        paths = [str(BACKEND_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONIOENCODING"] = "utf-8"  # monitor.log is written as UTF-8 on every platform
    return env
