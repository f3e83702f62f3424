"""ComfyUI probe: GET /system_stats for identity and devices, GET /queue for depth.

Response shapes (ComfyUI server.py): /system_stats -> {"system": {...}, "devices": [...]};
/queue -> {"queue_running": [...], "queue_pending": [...]}.
"""
from __future__ import annotations

from .base import CheckResult, Probe
from .http import ProbeError


class ComfyUIProbe(Probe):
    kind = "comfyui"
    hint = "Start it with `python main.py` in your ComfyUI folder."

    @property
    def display_name(self) -> str:
        return "ComfyUI"

    def check(self) -> CheckResult:
        result = CheckResult(False)
        try:
            stats = self.timed_get(result, "/system_stats")
            if stats.status != 200:
                raise ProbeError("http_status", f"{self.url}/system_stats answered HTTP {stats.status}", stats.status)
            data = stats.json()
            system = data.get("system") if isinstance(data, dict) else None
            if not isinstance(system, dict) or not isinstance(data.get("devices"), list):
                raise ProbeError("wrong_service", f"{self.url} answered /system_stats, but not as ComfyUI does "
                                 "(no system/devices); is another app on this port?")
            queue = self.timed_get(result, "/queue")
            if queue.status != 200:
                raise ProbeError("http_status", f"{self.url}/queue answered HTTP {queue.status}", queue.status)
            q = queue.json()
            if not isinstance(q, dict):
                raise ProbeError("wrong_service", f"{self.url}/queue is not a ComfyUI queue")
        except ProbeError as exc:
            return self.fail(exc, result)

        running = q.get("queue_running") or []
        pending = q.get("queue_pending") or []
        devices = [
            {"name": d.get("name", "?"), "type": d.get("type", "?"),
             "vram_total": d.get("vram_total"), "vram_free": d.get("vram_free")}
            for d in data["devices"] if isinstance(d, dict)
        ]
        result.healthy = True
        result.version = str(system.get("comfyui_version") or "unknown")
        result.capabilities = ["images", "workflows"]
        result.details = {
            "python_version": system.get("python_version"),
            "pytorch_version": system.get("pytorch_version"),
            "os": system.get("os"),
            "ram_total": system.get("ram_total"),
            "ram_free": system.get("ram_free"),
            "devices": devices,
            "queue_running": len(running),
            "queue_pending": len(pending),
            "queue_depth": len(running) + len(pending),
        }
        return result
