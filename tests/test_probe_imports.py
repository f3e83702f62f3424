"""Each probe process imports only what it runs: its own probe module, never the others',
and the `run-all` supervisor no probe loop at all (every module is memory held for as long
as the process lives; bench figures 9 and 15). Checked in fresh interpreters."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_gradio_probe_does_not_load_the_other_probes():
    mods = _modules_after("from probes.registry import make_probe\n"
                          "make_probe('wan2gp', {'flavour': 'wan2gp', 'url': 'http://127.0.0.1:1'})")
    assert "probes.gradio" in mods
    assert not {"probes.llm", "probes.comfyui", "probes.rvc_python"} & mods


def test_every_flavour_still_resolves_to_its_class():
    from probes.base import Probe
    from probes.registry import PROBES, make_probe

    for flavour in PROBES:
        probe = make_probe("svc", {"flavour": flavour, "url": "http://127.0.0.1:1"})
        assert isinstance(probe, Probe) and probe.service == "svc"


def test_the_supervisor_command_loads_no_probe_loop():
    # Importing the command stays light (`md-probes --help`, the spawn path on macOS and
    # Windows); on Linux supervise() preloads the runtime on purpose, to fork from it.
    mods = _modules_after("import probes.cli")
    assert not {"probes.base", "probes.registry", "probes.http", "http.client"} & mods
