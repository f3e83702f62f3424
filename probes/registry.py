"""Which probe class serves which flavour (the `flavour` key in the config).

Each probe runs in a process of its own, so only its module is imported: a Gradio probe
never loads the language-model probe's code, nor the supervisor any probe's (each module
costs its process memory for as long as it runs; bench figures 9 and 15).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Probe

# flavour -> (module in this package, class name)
PROBES: dict[str, tuple[str, str]] = {
    "comfyui": ("comfyui", "ComfyUIProbe"),
    "wan2gp": ("gradio", "Wan2GPProbe"),
    "webui": ("gradio", "RVCWebUIProbe"),        # RVC WebUI (infer-web.py, Gradio 3)
    "rvc-python": ("rvc_python", "RVCPythonProbe"),  # RVC through the rvc-python API server
    "audioldm": ("gradio", "AudioLDMProbe"),
    "gradio": ("gradio", "GradioProbe"),         # any other Gradio app; set expect_title to check its identity
    "llm": ("llm", "LLMProbe"),
}


def probe_class(flavour: str) -> "type[Probe]":
    module, name = PROBES[flavour]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def make_probe(service: str, settings: dict) -> "Probe":
    flavour = settings.get("flavour", service)
    if flavour not in PROBES:
        raise ValueError(f"services.{service}.flavour {flavour!r} has no probe (known: {', '.join(sorted(PROBES))})")
    return probe_class(flavour)(service, settings)
