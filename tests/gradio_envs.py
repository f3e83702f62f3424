"""A separate venv with gradio 3.14, RVC WebUI's pin, for the tests that run a real
Gradio 3.14 app. Its dependencies are older than the project's own (pydantic 1,
fastapi < 0.100), so it cannot live in .venv.

The pins are the "Gradio 3.14 API compatibility" block of RVC's own requirements
(requirments_cu128_py312.txt), plus setuptools < 81 (gradio 3.14 imports pkg_resources)
and numpy < 2, with the Python 3.10 that pyenv provides. The venv is built once under
build/ and reused while its marker file names the same pins.

Build it by hand:  .venv/bin/python -m tests.gradio_envs
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "venv-gradio314"
PINS = [
    "gradio>=3.14.0,<3.15", "altair>=4.2.0,<5", "anyio>=3.6.2,<4", "fastapi>=0.88.0,<0.100",
    "httpx>=0.23.0,<0.24", "markdown-it-py>=2.2.0,<3", "mdit-py-plugins>=0.3.3,<0.4", "pydantic>=1.10.13,<2",
    "pyparsing>=3.0.9,<3.1", "starlette>=0.22.0,<0.28", "uvicorn>=0.20.0,<0.23", "websockets>=10.4,<11",
    "setuptools<81", "numpy<2",
]
MARKER = "gradio-envs.txt"  # written last: a venv without it is half-built


class EnvError(RuntimeError):
    pass


def base_python() -> str:
    """Python 3.10 from pyenv (gradio 3.14 predates 3.12's removals), else MD_HEALTH_PY310."""
    explicit = os.environ.get("MD_HEALTH_PY310")
    if explicit:
        return explicit
    try:
        prefix = subprocess.run(["pyenv", "prefix", "3.10.13"], capture_output=True, text=True, timeout=30,
                                check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvError(f"no Python 3.10 for the gradio 3.14 venv (pyenv prefix 3.10.13 failed: {exc}); "
                       "set MD_HEALTH_PY310 to a python3.10") from None
    return str(Path(prefix) / "bin" / "python3.10")


def venv_python(venv: Path = VENV) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure_gradio314(venv: Path = VENV) -> Path:
    """The python of a venv with gradio 3.14, built now if it is missing or half-built."""
    marker = venv / MARKER
    wanted = "\n".join(PINS) + "\n"
    if marker.is_file() and marker.read_text() == wanted and venv_python(venv).exists():
        return venv_python(venv)
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [[base_python(), "-m", "venv", str(venv)],
             [str(venv_python(venv)), "-m", "pip", "install", "--quiet", *PINS]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise EnvError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    check = subprocess.run([str(venv_python(venv)), "-c", "import gradio; print(gradio.__version__)"],
                           capture_output=True, text=True, timeout=300)
    if check.returncode != 0 or not check.stdout.startswith("3.14."):
        raise EnvError(f"gradio 3.14 does not import in {venv}:\n{check.stderr[-3000:]}")
    marker.write_text(wanted)
    return venv_python(venv)


if __name__ == "__main__":
    start = time.monotonic()
    print(ensure_gradio314(), f"({time.monotonic() - start:.1f} s)")
