"""The Makefile on a fresh clone: `make run` installs only what running needs, `make test`
and `make bench` add their own extras, and the Python 3.13 venv for bpy 5.3 is a skip on a
developer's machine but a failure under CI=true when Python 3.13 is missing. The recipes
are read with `make -n` from a copy without any venv (nothing is installed)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(not MAKE, reason="needs make")


@pytest.fixture
def clone(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _make(folder, *args, **env):
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_make_run_installs_the_runtime_dependencies_only(clone):
    out = _make(clone, "-n", "run", PYTHON="python3")
    assert out.returncode == 0, out.stderr
    installs = [line for line in out.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [".venv/bin/python -m pip install --quiet -e ."], out.stdout
    assert "bpy" not in out.stdout and "[test" not in out.stdout and "[bench" not in out.stdout
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.split(">")[0].split("=")[0].strip() in ("bpy", "gradio", "pytest", "hypothesis", "matplotlib")
                   for d in deps["dependencies"])


def test_make_test_and_bench_add_their_extras(clone):
    out = _make(clone, "-n", "test", PYTHON="python3", PYTHON313="/nonexistent/python3.13")
    assert out.returncode == 0, out.stderr
    assert "pip install --quiet -e '.[test]'" in out.stdout and "[bench" not in out.stdout
    out = _make(clone, "-n", "bench", PYTHON="python3")
    assert "pip install --quiet -e '.[bench]'" in out.stdout


def test_a_missing_python_3_13_fails_under_ci_and_skips_elsewhere(clone):
    stamp = ".venv-bpy313/.installed-bpy-5.3.0"
    out = _make(clone, stamp, PYTHON313="/nonexistent/python3.13", CI="true")
    assert out.returncode != 0 and "no Python 3.13" in out.stdout + out.stderr
    out = _make(clone, stamp, PYTHON313="/nonexistent/python3.13", CI="")
    assert out.returncode == 0 and "will be skipped" in out.stdout
    assert not (clone / ".venv-bpy313").exists()
