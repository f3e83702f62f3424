"""What the add-on packaging tests share: the zips `make addon` builds (built once per test
session, wheels from the build's cache), and the real interpreters they run on.

Interpreters: Python 3.10 / 3.11 / 3.13 from pyenv (`pyenv prefix X`) or PYTHON310 /
PYTHON311 / PYTHON313; bpy 5.3.0 lives in the Makefile's second venv (.venv-bpy313, or
BPY313_PYTHON). Outside CI a missing one skips its tests; under CI=true it fails them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYENV = {"3.10": "3.10.13", "3.11": "3.11.7", "3.13": "3.13.0"}
FAKE_CONFIG = "".join(f"[services.{name}]\nenabled = false\n\n" for name in ("wan2gp", "rvc", "audioldm", "llm"))

_dist: Path | None = None


def dist() -> Path:
    """The folder with every zip of `make addon`, built the first time a test asks."""
    global _dist
    if _dist is None:
        out = Path(tempfile.mkdtemp(prefix="md-addon-"))
        atexit.register(shutil.rmtree, out, True)
        result = subprocess.run([sys.executable, str(ROOT / "blender_ui" / "build.py"), "--out", str(out)],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        _dist = out / "dist"
    return _dist


def zip_path(kind: str, platform: str = "linux_x64") -> Path:
    """kind "extension" or "legacy"."""
    pattern = f"*-legacy-{platform}.zip" if kind == "legacy" else f"*-[0-9]*-{platform}.zip"
    found = [p for p in dist().glob(pattern) if kind == "legacy" or "-legacy-" not in p.name]
    assert len(found) == 1, (kind, platform, sorted(p.name for p in dist().iterdir()))
    return found[0]


def missing(what: str) -> None:
    """A needed interpreter is absent: a skip on a developer's machine, a failure in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing (CI=true: the Makefile and .ci/run must provide it)")
    pytest.skip(f"{what} is missing")


def interpreter(version: str) -> str:
    """A bare CPython `version` (nothing installed in it but the standard library)."""
    named = os.environ.get(f"PYTHON{version.replace('.', '')}")
    if not named and shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "prefix", PYENV[version]], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            named = str(Path(out.stdout.strip().splitlines()[0]) / "bin" / f"python{version}")
    if not named or not Path(named).is_file():
        missing(f"Python {version}")
    return named


def bpy_python(version: str) -> str:
    """An interpreter with real bpy: 5.0.1 on 3.11 (the main venv), 5.3.0 on 3.13."""
    if version == "3.11":
        return sys.executable
    named = os.environ.get("BPY313_PYTHON") or str(ROOT / ".venv-bpy313" / "bin" / "python")
    if not Path(named).is_file():
        missing(f"bpy 5.3.0 on Python 3.13 ({named}; `make test` creates it)")
    return named
