"""Which probe class serves which service kind (the `flavour` key in the config)."""
from __future__ import annotations

from .base import Probe
from .comfyui import ComfyUIProbe

PROBES: dict[str, type[Probe]] = {
    "comfyui": ComfyUIProbe,
}


def make_probe(service: str, settings: dict) -> Probe:
    flavour = settings.get("flavour", service)
    try:
        cls = PROBES[flavour]
    except KeyError:
        raise ValueError(f"services.{service}.flavour {flavour!r} has no probe (known: {', '.join(sorted(PROBES))})") from None
    return cls(service, settings)
