"""Gradio backends: Wan2GP (Gradio 5), RVC WebUI (Gradio 3), AudioLDM (Gradio 3).

Gradio's own endpoints, which every Gradio app has (checked against gradio's routes.py and
a real gradio app in the tests):
  GET /config                       every version; `version` is the Gradio version, plus
                                    `title`; 4.44+ add `protocol`, 5.x+ add `api_prefix`
  GET {prefix}/info                 {"named_endpoints": {...}, "unnamed_endpoints": {...}}
  GET {prefix}/queue/status         {"queue_size": N, ...}
where prefix is "" for Gradio 3 and 4 and "/gradio_api" from 5 on. Never GET
/startup-events: it has side effects.

/config describes the whole UI and is big for large apps (Wan2GP's is megabytes), so it is
read (with /info) on the first check, after a failure and every IDENTITY_EVERY seconds;
the cheap queue status is read on every check.

Identity: AudioLDM and Wan2GP both default to port 7860, so the app on the port must prove
it is the one expected, by its title or, when the title is Gradio's generic default, by
its named endpoints or the text of its UI.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from .base import CheckResult, Probe
from .http import ProbeError

IDENTITY_EVERY = 30.0  # seconds between re-reads of /config and /info while up
# Gradio 4+ names every event listener after its function, so a big UI can list hundreds of
# endpoints; every status message carries them, so they are capped (the count stays exact).
MAX_CAPABILITIES = 40
MAX_ENDPOINTS = 200
CONFIG_MAX_BYTES = 32 << 20
GENERIC_TITLES = {"", "gradio"}


class GradioProbe(Probe):
    kind = "gradio"
    app_name = "the Gradio app"
    markers: tuple[str, ...] = ()  # lower-case words that identify the app
    capabilities_base: list[str] = []

    def __init__(self, service: str, settings: dict) -> None:
        super().__init__(service, settings)
        self._meta: dict | None = None  # what /config and /info said, while it still holds
        self._meta_at = 0.0
        expect = settings.get("expect_title")
        if expect:
            self.markers = (expect.lower(),)

    @property
    def display_name(self) -> str:
        return self.app_name

    def _port(self) -> str:
        parts = urlsplit(self.url)
        return str(parts.port or (443 if parts.scheme == "https" else 80))

    def identify(self, title: str, endpoints: list[str], config_text: str) -> bool:
        """True when the app is the one expected (or when nothing is expected)."""
        if not self.markers:
            return True
        t = title.strip().lower()
        if t not in GENERIC_TITLES:
            return any(m in t for m in self.markers)
        hay = " ".join(endpoints).lower() + " " + config_text.lower()
        return any(m in hay for m in self.markers)

    def _read_meta(self, result: CheckResult) -> dict:
        resp = self.timed_get(result, "/config", max_bytes=CONFIG_MAX_BYTES)
        if resp.status in (401, 403):
            raise ProbeError("auth", f"{self.url}/config needs a login: {self.app_name} was launched with Gradio "
                             "auth, which the probe cannot pass; launch it without auth on a local port", resp.status)
        if resp.status != 200:
            raise ProbeError("http_status", f"{self.url}/config answered HTTP {resp.status}; "
                             f"is {self.app_name} (a Gradio app) on this port?", resp.status)
        cfg = resp.json()
        if not isinstance(cfg, dict) or not isinstance(cfg.get("version"), str):
            raise ProbeError("wrong_service", f"{self.url}/config is not a Gradio config; "
                             f"port {self._port()} is not serving {self.app_name}")
        version = cfg["version"].strip()
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = 0
        prefix = cfg.get("api_prefix")
        if not isinstance(prefix, str):
            prefix = "/gradio_api" if major >= 5 else ""
        prefix = prefix.rstrip("/")
        title = cfg.get("title") if isinstance(cfg.get("title"), str) else ""
        endpoints: list[str] = []
        info = self.timed_get(result, prefix + "/info")
        if info.status == 200:
            data = info.json()
            named = data.get("named_endpoints") if isinstance(data, dict) else None
            if isinstance(named, dict):
                endpoints = sorted(str(k).lstrip("/") for k in named)
        if not self.identify(title, endpoints, resp.body.decode("utf-8", "replace")):
            shown = title or "an untitled Gradio app"
            raise ProbeError("wrong_service", f"port {self._port()} is serving {shown}, not {self.app_name}; "
                             f"check services.{self.service}.url (Wan2GP and AudioLDM both default to 7860)")
        return {"version": version, "major": major, "prefix": prefix, "title": title,
                "endpoints": endpoints, "protocol": cfg.get("protocol"), "enable_queue": cfg.get("enable_queue")}

    def check(self) -> CheckResult:
        result = CheckResult(False)
        try:
            if self._meta is None or time.monotonic() - self._meta_at > IDENTITY_EVERY:
                self._meta = None
                meta = self._read_meta(result)
                self._meta, self._meta_at = meta, time.monotonic()
            meta = self._meta
            queue_depth = None
            q = self.timed_get(result, meta["prefix"] + "/queue/status")
            if q.status == 200:
                data = q.json()
                if isinstance(data, dict) and isinstance(data.get("queue_size"), int):
                    queue_depth = data["queue_size"]
            elif q.status >= 500:
                raise ProbeError("http_status", f"{self.url}{meta['prefix']}/queue/status answered HTTP {q.status}; "
                                 f"{self.app_name} is failing, see its console", q.status)
            # 404: this app runs without a queue, so its depth is unknown (None), not 0.
        except ProbeError as exc:
            self._meta = None  # whatever answers next must prove its identity again
            return self.fail(exc, result)
        result.healthy = True
        result.version = f"gradio {meta['version']}"
        result.capabilities = list(self.capabilities_base) + meta["endpoints"][:MAX_CAPABILITIES]
        result.details = {
            "title": meta["title"],
            "gradio_version": meta["version"],
            "queue_depth": queue_depth,
            "endpoints": meta["endpoints"][:MAX_ENDPOINTS],
            "endpoint_count": len(meta["endpoints"]),
            "resources": self.usage(),
        }
        return result


class Wan2GPProbe(GradioProbe):
    kind = "wan2gp"
    app_name = "Wan2GP"
    markers = ("wangp", "wan2gp")
    hint = "Start it with `python wgp.py` in your Wan2GP folder (add `--server-port` if you moved it)."
    capabilities_base = ["video"]


class RVCWebUIProbe(GradioProbe):
    kind = "rvc"
    app_name = "RVC WebUI"
    markers = ("rvc",)
    hint = "Start it with `python infer-web.py --port 7865` in your RVC folder."
    capabilities_base = ["voice"]


class AudioLDMProbe(GradioProbe):
    kind = "audioldm"
    app_name = "AudioLDM"
    markers = ("audioldm", "text2audio")
    hint = "Start it with `python app.py` in your AudioLDM folder (GRADIO_SERVER_PORT=7863 to avoid Wan2GP's port)."
    capabilities_base = ["sound"]
