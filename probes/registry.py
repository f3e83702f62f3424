"""Which probe class serves which flavour (the `flavour` key in the config)."""
from __future__ import annotations

from .base import Probe
from .comfyui import ComfyUIProbe
from .gradio import AudioLDMProbe, GradioProbe, RVCWebUIProbe, Wan2GPProbe
from .llm import LLMProbe
from .rvc_python import RVCPythonProbe

PROBES: dict[str, type[Probe]] = {
    "comfyui": ComfyUIProbe,
    "wan2gp": Wan2GPProbe,
    "webui": RVCWebUIProbe,        # RVC WebUI (infer-web.py, Gradio 3)
    "rvc-python": RVCPythonProbe,  # RVC through the rvc-python API server
    "audioldm": AudioLDMProbe,
    "gradio": GradioProbe,         # any other Gradio app; set expect_title to check its identity
    "llm": LLMProbe,
}


def make_probe(service: str, settings: dict) -> Probe:
    flavour = settings.get("flavour", service)
    try:
        cls = PROBES[flavour]
    except KeyError:
        raise ValueError(f"services.{service}.flavour {flavour!r} has no probe (known: {', '.join(sorted(PROBES))})") from None
    return cls(service, settings)
