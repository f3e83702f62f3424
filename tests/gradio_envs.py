"""A separate venv with gradio 3.14, RVC WebUI's pin, for the tests that run a real
Gradio 3.14 app. Its dependencies are older than the project's own (pydantic 1,
fastapi < 0.100), so it cannot live in .venv.

The pins are the "Gradio 3.14 API compatibility" block of RVC's own requirements
(requirments_cu128_py312.txt), plus setuptools < 81 (gradio 3.14 imports pkg_resources)
and numpy < 2, with the Python 3.10 that pyenv provides. The venv is built once under
build/ and reused while its marker file names the same pins.

PINS say what matters; LOCK is one resolved set of exact versions that satisfies them
(every package in the venv). The build installs LOCK without resolving (pip's resolver
spends half a minute on gradio 3.14's tree), then `pip check` proves the set consistent and
`lock_problems` that it meets every pin. After changing PINS, print a new LOCK with
`.venv/bin/python -m tests.gradio_envs --lock` (it resolves PINS in a scratch venv).

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
# pip freeze --all of a venv built from PINS, less pip itself.
LOCK = [
    "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "altair==4.2.2", "anyio==3.7.1",
    "async-timeout==5.0.1", "attrs==26.1.0", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3",
    "click==8.5.1", "contourpy==1.3.2", "cycler==0.12.1", "entrypoints==0.4.2", "exceptiongroup==1.3.2",
    "fastapi==0.99.1", "ffmpy==1.0.0", "fonttools==4.65.0", "frozenlist==1.8.0", "fsspec==2026.9.0",
    "gradio==3.14.0", "h11==0.14.0", "httpcore==0.16.3", "httpx==0.23.3", "idna==3.20", "Jinja2==3.1.6",
    "jsonschema-specifications==2025.9.1", "jsonschema==4.26.0", "kiwisolver==1.5.1", "linkify-it-py==2.2.0",
    "markdown-it-py==2.2.0", "MarkupSafe==3.0.4", "matplotlib==3.10.9", "mdit-py-plugins==0.3.5",
    "mdurl==0.1.2", "multidict==7.1.0", "numpy==1.26.4", "orjson==3.13.0", "packaging==26.4", "pandas==2.3.3",
    "pillow==12.3.0", "propcache==0.5.4", "pycryptodome==4.4.0", "pydantic==1.10.27", "pydub==0.25.1",
    "pyparsing==3.0.9", "python-dateutil==3.0.0", "python-multipart==0.0.32", "pytz==2026.6", "PyYAML==6.0.4",
    "referencing==0.37.0", "requests==2.34.2", "rfc3986==1.5.0", "rpds-py==0.30.0", "setuptools==65.5.0",
    "six==1.17.0", "sniffio==1.3.1", "starlette==0.27.0", "toolz==1.2.0", "typing_extensions==4.16.0",
    "tzdata==2026.6", "urllib3==2.8.0", "uvicorn==0.22.0", "websockets==10.4", "yarl==1.25.1",
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


def lock_problems(pins: list[str] = PINS, lock: list[str] = LOCK) -> list[str]:
    """The pins LOCK does not meet (a package missing, or a version outside the pin)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = {canonicalize_name(name): version for name, version in (line.split("==") for line in lock)}
    problems = []
    for pin in pins:
        req = Requirement(pin)
        version = locked.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            problems.append(f"{pin}: locked {version}")
    return problems


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise EnvError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}")
    return proc.stdout


def ensure_gradio314(venv: Path = VENV) -> Path:
    """The python of a venv with gradio 3.14, built now if it is missing or half-built."""
    marker = venv / MARKER
    wanted = "\n".join(PINS + ["# lock"] + LOCK) + "\n"
    if marker.is_file() and marker.read_text() == wanted and venv_python(venv).exists():
        return venv_python(venv)
    problems = lock_problems()
    if problems:
        raise EnvError("LOCK does not meet PINS (regenerate it: python -m tests.gradio_envs --lock): "
                       + "; ".join(problems))
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # --no-deps: LOCK is the whole set, so there is nothing to resolve; --no-compile: the
    # few modules the tests import are compiled when first imported, not all of them now.
    steps = [[base_python(), "-m", "venv", str(venv)],
             [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", *LOCK],
             [str(venv_python(venv)), "-m", "pip", "check"]]
    for cmd in steps:
        _run(cmd)
    check = subprocess.run([str(venv_python(venv)), "-c", "import gradio; print(gradio.__version__)"],
                           capture_output=True, text=True, timeout=300)
    if check.returncode != 0 or not check.stdout.startswith("3.14."):
        raise EnvError(f"gradio 3.14 does not import in {venv}:\n{check.stderr[-3000:]}")
    marker.write_text(wanted)
    return venv_python(venv)


def resolve_lock() -> list[str]:
    """Resolve PINS from scratch in a temporary venv: the LOCK to paste above."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gradio314-lock-") as tmp:
        scratch = Path(tmp) / "venv"
        _run([base_python(), "-m", "venv", str(scratch)])
        _run([str(venv_python(scratch)), "-m", "pip", "install", "--quiet", *PINS])
        frozen = _run([str(venv_python(scratch)), "-m", "pip", "freeze", "--all"]).split()
    return sorted((line for line in frozen if not line.startswith("pip==")), key=str.lower)


if __name__ == "__main__":
    start = time.monotonic()
    if sys.argv[1:] == ["--lock"]:
        print("LOCK = [\n" + "".join(f"    {line!r},\n" for line in resolve_lock()).replace("'", '"') + "]")
    else:
        print(ensure_gradio314(), f"({time.monotonic() - start:.1f} s)")
