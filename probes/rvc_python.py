"""RVC through the rvc-python API server (`python -m rvc_python api -p 5050`), the second
flavour of the RVC probe (config: services.rvc.flavour = "rvc-python").

rvc_python/api.py: GET /models -> {"models": [names]}; GET /params -> {"f0method",
"f0up_key", "index_rate", "filter_radius", "resample_sr", "rms_mix_rate", "protect"}.
It has no version endpoint and no queue.
"""
from __future__ import annotations

from .base import CheckResult, Probe
from .http import ProbeError


class RVCPythonProbe(Probe):
    kind = "rvc"
    hint = "Start it with python -m rvc_python api -p 5050 (and set services.rvc.url to that port)."

    @property
    def display_name(self) -> str:
        return "rvc-python"

    def check(self) -> CheckResult:
        result = CheckResult(False)
        try:
            resp = self.timed_get(result, "/models")
            if resp.status != 200:
                raise ProbeError("http_status", f"{self.url}/models answered HTTP {resp.status}; "
                                 "is this the rvc-python API server?", resp.status)
            data = resp.json()
            models = data.get("models") if isinstance(data, dict) else None
            if not isinstance(models, list):
                raise ProbeError("wrong_service", f"{self.url}/models has no model list; the app on this port "
                                 "is not the rvc-python API server (for the RVC WebUI set flavour = \"webui\")")
            params = self.timed_get(result, "/params")
            p = params.json() if params.status == 200 else None
        except ProbeError as exc:
            return self.fail(exc, result)
        result.healthy = True
        result.version = "rvc-python"
        result.capabilities = ["voice"] + [f"model:{m}" for m in models if isinstance(m, str)]
        result.details = {
            "models": [m for m in models if isinstance(m, str)],
            "params": p if isinstance(p, dict) else None,
            # rvc-python has no queue to ask about: unknown, not 0 (contract C2).
            "queue_running": None, "queue_waiting": None, "queue_depth": None,
            "resources": self.usage(),
        }
        return result
