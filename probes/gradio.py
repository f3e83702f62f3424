"""Gradio backends: Wan2GP (Gradio 5), RVC WebUI (Gradio 3.14), AudioLDM (Gradio 3).

Gradio's own endpoints, which every Gradio app has (checked against gradio's routes.py and
real gradio 3.14 and 6.x apps in the tests):
  GET /config                       every version; `version` is the Gradio version, plus
                                    `title`, `components` and `dependencies`; 4.44+ add
                                    `protocol`, 5.x+ add `api_prefix`
  GET {prefix}/queue/status         {"queue_size": N, ...}: events waiting, not running
where prefix is "" for Gradio 3 and 4 and "/gradio_api" from 5 on. Never GET
/startup-events: it has side effects.

Named endpoints come from /config's `dependencies[].api_name`: every version has it, and
Gradio 3.14 (RVC's pin) has nothing else, since its /info answers 404. The rules are the
ones /info applies where it exists: a dependency with a backend function and a string
name, not hidden by `show_api: false` (3.x-5.x) or `api_visibility` other than "public"
(6.x, which writes api_name=False as the string "false" with visibility "private").

/config describes the whole UI and is big for large apps (Wan2GP's is megabytes), so it is
read on the first check, after a failure and every IDENTITY_EVERY seconds; the cheap queue
status is read on every check.

Identity: AudioLDM and Wan2GP both default to port 7860, so the app on the port must prove
it is the one expected, by its title or, when the title is Gradio's generic default, by
its named endpoints or the text of its UI. An untitled app is named by the first <h1> of
its UI (AudioLDM's has one) when it says who is on the port instead.
"""
from __future__ import annotations

import html
import re
import time
from urllib.parse import urlsplit

from .base import CheckResult, Probe
from .http import ProbeError

IDENTITY_EVERY = 30.0  # seconds between re-reads of /config while up
# Gradio 4+ names every event listener after its function, so a big UI can list hundreds of
# endpoints; every status message carries them, so they are capped (the count stays exact).
MAX_CAPABILITIES = 40
MAX_ENDPOINTS = 200
MAX_NAME = 60  # characters of an app's <h1> shown in a message
CONFIG_MAX_BYTES = 32 << 20
GENERIC_TITLES = {"", "gradio"}
# <h1> as HTML (gr.HTML; gr.Markdown in 3.x is rendered to HTML in /config) or as a
# Markdown heading (gr.Markdown in 4.x+ keeps its source).
_H1_HTML = re.compile(r"<h1\b[^>]*>(.*?)</h1\s*>", re.I | re.S)
_H1_MD = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", re.M)
_TAGS = re.compile(r"<[^>]*>")


def named_endpoints(config: dict) -> list[str]:
    """The API names /config's dependencies publish, sorted, as /info would list them."""
    names = set()
    deps = config.get("dependencies")
    for dep in deps if isinstance(deps, list) else ():
        if not isinstance(dep, dict):
            continue
        name = dep.get("api_name")
        if not isinstance(name, str) or not name.strip("/"):
            continue
        if dep.get("backend_fn") is False or dep.get("show_api") is False:
            continue
        if dep.get("api_visibility", "public") != "public":
            continue
        names.add(name.strip("/"))
    return sorted(names)


def ui_heading(config: dict) -> str:
    """The text of the first top-level heading in the app's components, or ""."""
    comps = config.get("components")
    for comp in comps if isinstance(comps, list) else ():
        props = comp.get("props") if isinstance(comp, dict) else None
        value = props.get("value") if isinstance(props, dict) else None
        if not isinstance(value, str):
            continue
        m = _H1_HTML.search(value) or _H1_MD.search(value)
        if m:
            text = " ".join(html.unescape(_TAGS.sub(" ", m.group(1))).split())
            if text:
                return text
    return ""


def short_name(heading: str) -> str:
    """'AudioLDM: Text-to-Audio Generation with ...' -> 'AudioLDM': the part before a
    subtitle separator, bounded."""
    name = re.split(r"\s*(?::|\s[-|\u2013\u2014]\s)\s*", heading, maxsplit=1)[0].strip() or heading
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 1].rstrip() + "\u2026"


class GradioProbe(Probe):
    kind = "gradio"
    app_name = "the Gradio app"
    markers: tuple[str, ...] = ()  # lower-case words that identify the app
    capabilities_base: list[str] = []
    # Why the queue is unknown, for an app that keeps its own queue inside one event.
    own_queue_note: str | None = None

    def __init__(self, service: str, settings: dict) -> None:
        super().__init__(service, settings)
        self._meta: dict | None = None  # what /config said, while it still holds
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

    @staticmethod
    def describe(title: str, heading: str, version: str) -> str:
        """Who is on the port, as a person would name it."""
        if title.strip().lower() not in GENERIC_TITLES:
            return title
        minor = ".".join(version.split(".")[:2])
        if heading:
            return f"{short_name(heading)} (untitled Gradio {minor} app)"
        return f"an untitled Gradio {minor} app"

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
        endpoints = named_endpoints(cfg)
        if not self.identify(title, endpoints, resp.body.decode("utf-8", "replace")):
            shown = self.describe(title, ui_heading(cfg), version)
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
            waiting = None
            q = self.timed_get(result, meta["prefix"] + "/queue/status")
            if q.status == 200:
                data = q.json()
                size = data.get("queue_size") if isinstance(data, dict) else None
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    waiting = size
            elif q.status >= 500:
                raise ProbeError("http_status", f"{self.url}{meta['prefix']}/queue/status answered HTTP {q.status}; "
                                 f"{self.app_name} is failing, see its console", q.status)
            # 404: this app runs without a queue, so what waits is unknown (None), not 0.
        except ProbeError as exc:
            self._meta = None  # whatever answers next must prove its identity again
            return self.fail(exc, result)
        result.healthy = True
        result.version = f"gradio {meta['version']}"
        result.capabilities = list(self.capabilities_base) + meta["endpoints"][:MAX_CAPABILITIES]
        result.details = {
            "title": meta["title"],
            "gradio_version": meta["version"],
            **self.queue_details(waiting),
            "endpoints": meta["endpoints"][:MAX_ENDPOINTS],
            "endpoint_count": len(meta["endpoints"]),
            "resources": self.usage(),
        }
        return result

    def queue_details(self, waiting: int | None) -> dict:
        """Contract C2. Gradio's queue_size counts the events waiting for a worker; no
        Gradio endpoint says how many are running, so running is None."""
        if self.own_queue_note:
            return {"queue_running": None, "queue_waiting": None, "queue_depth": None,
                    "queue_note": self.own_queue_note}
        return {"queue_running": None, "queue_waiting": waiting, "queue_depth": waiting}


class Wan2GPProbe(GradioProbe):
    kind = "wan2gp"
    app_name = "Wan2GP"
    markers = ("wangp", "wan2gp")
    hint = "Start it with python wgp.py in your Wan2GP folder (add --server-port if you moved it)."
    capabilities_base = ["video"]
    # wgp.py keeps its video tasks in a per-session list and runs them all inside one
    # process_tasks event, so Gradio's queue shows at most that one event.
    own_queue_note = ("Wan2GP keeps its own task queue and runs it inside one Gradio event (process_tasks), "
                      "so how many videos run or wait cannot be read from outside")


class RVCWebUIProbe(GradioProbe):
    kind = "rvc"
    app_name = "RVC WebUI"
    markers = ("rvc",)
    hint = ("Start it with python webui.py in your RVC folder. It listens on port 7865, or on the next free "
            "port (7866, 7867, ...) when 7865 is busy: set services.rvc.url to the port it printed, "
            "or run md-health discover.")
    capabilities_base = ["voice"]


class AudioLDMProbe(GradioProbe):
    kind = "audioldm"
    app_name = "AudioLDM"
    markers = ("audioldm", "text2audio")
    hint = "Start it with python app.py in your AudioLDM folder (GRADIO_SERVER_PORT=7863 to avoid Wan2GP's port)."
    capabilities_base = ["sound"]
