"""Language-model providers, all in one probe (service "llm"): is each configured provider
reachable, is its key valid, which models does it offer. Never spends a token: only the
free model-listing endpoints are called.

  OpenAI      GET {base}/models                      Authorization: Bearer KEY   base .../v1
  Anthropic   GET {base}/v1/models?limit=&after_id=  x-api-key, anthropic-version: 2023-06-01
  Azure       GET {endpoint}/openai/models?api-version=2024-10-21              api-key: KEY
  Ollama      GET /api/version, /api/tags, /api/ps (loaded models, VRAM, context), /api/status
  LM Studio   GET /api/v1/models (0.4+, loaded_instances[]); older: GET {base}/models, base .../v1
  llama.cpp   GET /health (503 "Loading model" while loading), /props (router or single model,
              is_sleeping), then /models (router: per-model status) or /v1/models

Alive but not ready (CheckResult.readiness), only where the backend's API says so:
  loading   llama.cpp /health 503 "Loading model"; a router model "loading" or "downloading"
  sleeping  llama.cpp /props is_sleeping, a router model "sleeping" or "unloaded" (the router
            loads it on the next request); Ollama: the model is pulled but not in /api/ps (Ollama
            loads on demand and unloads after keep_alive); LM Studio 0.4+: no loaded_instances
            (loaded on the first request, "just in time")
None of these requests loads or wakes a model: no `?model=` is ever sent to llama.cpp (its
router would load that model to answer), and listing endpoints never count as use.
The service's readiness is the active provider's (the one offering active_model, or
active_provider); without one, ready when any usable provider is ready.

Keys come from the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, AZURE_OPENAI_API_KEY or
AZURE_API_KEY with AZURE_OPENAI_ENDPOINT) or from [llm.<provider>] api_key in the config.
A key is only ever put in a request header. Error text is built from status codes and the
provider's error *code* (never its message: OpenAI echoes part of the key there), and is
passed through `redact()` anyway; the probe's log output is filtered the same way.
"""
from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import CheckResult, Probe, Timing
from .http import ProbeError, Response, get

log = logging.getLogger("probes.llm")

ANTHROPIC_VERSION = "2023-06-01"
AZURE_API_VERSION = "2024-10-21"
MAX_PAGES = 10          # Anthropic pagination: 10 x 1000 models is far beyond any real list
MAX_IDS_ON_BUS = 200    # model_count stays exact; the id list is capped to keep frames small
PROVIDERS = ("openai", "anthropic", "azure", "ollama", "lmstudio", "llamacpp")
LOCAL = ("ollama", "lmstudio", "llamacpp")  # keyless servers that may be auto-detected
NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "azure": "Azure OpenAI", "ollama": "Ollama",
         "lmstudio": "LM Studio", "llamacpp": "llama.cpp"}
DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com",
                "ollama": "http://127.0.0.1:11434", "lmstudio": "http://127.0.0.1:1234/v1",
                "llamacpp": "http://127.0.0.1:8080"}
# llama-server listens on 8080 today and announces a move to 9931 ("ggml", llama.cpp PR #26508);
# without a configured URL both are tried, in this order, and the first that answers is used.
LLAMACPP_PORTS = ("http://127.0.0.1:8080", "http://127.0.0.1:9931")
# Provider states. The first three are usable (the provider answers and can serve a request).
USABLE = ("valid", "loading", "sleeping")
MAX_ROUTER_MODELS = 50  # router model states (and loaded models) carried on the bus; the count stays exact
# A provider's answer that is a verdict, and the service's error_kind for it, most pressing first.
# 529 is the provider's own state (overloaded), not the key's: its own kind.
ERROR_KINDS = {"invalid": "auth", "spend_limit": "spend_limit", "failed": "model_failed",
               "rate_limited": "rate_limited", "overloaded": "provider_overloaded"}
# Where a person puts the key or URL, named in error messages.
KEY_HINT = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
            "azure": "AZURE_OPENAI_API_KEY (or AZURE_API_KEY)"}
START_HINT = {"ollama": "start it with `ollama serve`", "lmstudio": "start LM Studio's local server (port 1234)",
              "llamacpp": "start `llama-server -m <model.gguf>`"}


# -- secrets ---------------------------------------------------------------------------
_SECRETS: set[str] = set()
_KEYLIKE = re.compile(r"\b(sk|sk-ant|sk-proj)-[A-Za-z0-9_\-*]{6,}")


def remember_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Remove every known key, and anything shaped like one, from `text`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


class RedactingFilter(logging.Filter):
    """Installed on the log handlers of a process running the llm probe: formats each record
    and redacts the result, so not even a traceback can carry a key out."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the record
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redact(message), None
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    handlers = root.handlers or [logging.lastResort]
    for h in handlers:
        if h is not None and not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def safe_url(url: str) -> str:
    """scheme://host:port/path without any user:password@ part."""
    p = urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


# -- settings ----------------------------------------------------------------------------
@dataclass
class ProviderSettings:
    name: str
    url: str = ""
    key: str | None = None
    explicit: bool = False  # set in config or env (else: auto-detected local server)
    enabled: bool = True
    api_version: str = AZURE_API_VERSION
    problem: str = ""      # why it cannot be checked (e.g. Azure key without endpoint)
    candidates: tuple[str, ...] = ()  # URLs to try in turn when none is configured (llama.cpp)


def _ollama_url(host: str) -> str:
    """OLLAMA_HOST as Ollama reads it: "host", "host:port" or a URL; 0.0.0.0 means here."""
    host = host.strip()
    if "://" not in host:
        host = "http://" + host
    p = urlsplit(host)
    hostname = p.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    return f"{p.scheme}://{hostname}:{p.port or 11434}"


def resolve(section: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, ProviderSettings]:
    """Provider settings from the validated [llm] section, with the environment on top."""
    env = dict(os.environ if env is None else env)
    out: dict[str, ProviderSettings] = {}
    for name in PROVIDERS:
        table = section.get(name) or {}
        ps = ProviderSettings(name, url=table.get("url") or DEFAULT_URLS.get(name, ""),
                              key=table.get("api_key"), explicit=bool(table), enabled=table.get("enabled", True),
                              api_version=table.get("api_version", AZURE_API_VERSION))
        if name == "openai":
            ps.key = env.get("OPENAI_API_KEY") or ps.key
            ps.url = env.get("OPENAI_BASE_URL") or ps.url
        elif name == "anthropic":
            ps.key = env.get("ANTHROPIC_API_KEY") or ps.key
            ps.url = env.get("ANTHROPIC_BASE_URL") or ps.url
        elif name == "azure":
            ps.key = env.get("AZURE_OPENAI_API_KEY") or env.get("AZURE_API_KEY") or ps.key
            ps.url = env.get("AZURE_OPENAI_ENDPOINT") or table.get("url") or ""
            if ps.key and not ps.url:
                ps.problem = "a key is set but no endpoint: set AZURE_OPENAI_ENDPOINT or [llm.azure] url"
        elif name == "ollama" and env.get("OLLAMA_HOST"):
            ps.url, ps.explicit = _ollama_url(env["OLLAMA_HOST"]), True
        elif name in ("lmstudio", "llamacpp") and env.get(f"MD_HEALTH_{name.upper()}_URL"):
            ps.url, ps.explicit = env[f"MD_HEALTH_{name.upper()}_URL"], True
        elif name == "llamacpp" and not table.get("url"):
            ps.candidates = LLAMACPP_PORTS
        ps.url = ps.url.rstrip("/")
        if name in KEY_HINT:
            ps.explicit = bool(ps.key)
        remember_secret(ps.key)
        out[name] = ps
    return out


# -- checking one provider ---------------------------------------------------------------
@dataclass
class Outcome:
    configured: bool
    # valid | loading | sleeping | invalid | rate_limited | spend_limit | overloaded | failed |
    # unreachable | not_configured
    state: str
    models: list[str] = field(default_factory=list)
    model_count: int | None = None
    retry_after: float | None = None
    error: str = ""
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)
    reason: str = ""           # why loading or sleeping, in the backend's words
    url: str = ""              # where it answered, when that was one of several candidates

    @property
    def usable(self) -> bool:
        return self.state in USABLE

    @property
    def readiness(self) -> str:
        return self.state if self.state in ("loading", "sleeping") else ""

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "state": self.state, "model_count": self.model_count,
                "models": self.models[:MAX_IDS_ON_BUS], "retry_after": self.retry_after,
                "error": redact(self.error), **({"version": self.version} if self.version else {}),
                **({"readiness_reason": redact(self.reason)} if self.reason else {}), **self.extra}


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _retry_after(resp: Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; rare for these APIs


_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,60}")


def _error_codes(resp: Response) -> tuple[str, str]:
    """The provider's machine-readable error code or type, and Anthropic's
    `error.details.error_code` (e.g. enforced_spend_limit_reached), if it gave them; never
    its message, which can echo part of the key."""
    try:
        body = resp.json()
    except ProbeError:
        return "", ""
    err = body.get("error") if isinstance(body, dict) else None
    code = detail = ""
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or ""
        details = err.get("details")
        if isinstance(details, dict):
            detail = details.get("error_code") or ""
    elif isinstance(err, str):
        code = err
    code, detail = str(code), str(detail)
    return (code if _CODE.fullmatch(code) else "", detail if _CODE.fullmatch(detail) else "")


SPEND_LIMIT_CODE = "enforced_spend_limit_reached"


class ProviderCheck:
    """One check of one provider; `get()` records timings and turns HTTP answers into outcomes."""

    def __init__(self, ps: ProviderSettings, timeout: float, active_model: str | None = None) -> None:
        self.ps = ps
        self.timeout = timeout
        self.active_model = active_model
        self.name = NAMES[ps.name]
        self.timings: list[Timing] = []

    def get(self, path: str, headers: dict[str, str] | None = None, ok_statuses=(200,),
            base: str | None = None) -> Response:
        label = f"{self.ps.name} {path.split('?')[0]}"
        start = time.perf_counter()
        try:
            resp = get((self.ps.url if base is None else base) + path, self.timeout, headers=headers)
        except ProbeError as exc:
            self.timings.append(Timing(label, (time.perf_counter() - start) * 1000, False, exc.kind))
            hint = START_HINT.get(self.ps.name, "check your network and the base URL")
            raise _Stop(Outcome(True, "unreachable", error=f"{self.name}: {exc.message}; {hint}")) from None
        if resp.status in ok_statuses:
            self.timings.append(Timing(label, resp.duration_ms, True, None))
            return resp
        code, detail_code = _error_codes(resp)
        kind = ("auth" if resp.status in (401, 403) else
                "spend_limit" if resp.status == 429 and detail_code == SPEND_LIMIT_CODE else
                "rate_limited" if resp.status == 429 else
                "provider_overloaded" if resp.status == 529 or code == "overloaded_error" else "http_status")
        self.timings.append(Timing(label, resp.duration_ms, False, kind))
        detail = f"HTTP {resp.status}{', ' + code if code else ''}"
        if resp.status in (401, 403):
            where = KEY_HINT.get(self.ps.name, f"[llm.{self.ps.name}] api_key")
            raise _Stop(Outcome(True, "invalid", error=f"{self.name} rejected the API key ({detail}): "
                                f"check {where}, or create a new key"))
        if resp.status == 429 and detail_code == SPEND_LIMIT_CODE:
            # Anthropic's monthly spend cap: no retry-after, and waiting minutes will not lift it.
            raise _Stop(Outcome(True, "spend_limit", error=f"{self.name}: spend limit reached (HTTP 429, "
                                f"{SPEND_LIMIT_CODE}); requests stay refused until the limit is raised in the "
                                "provider's console or the month resets, waiting will not help"))
        if resp.status == 529 or code == "overloaded_error":
            ra = _retry_after(resp)
            wait = f"; retry after {ra:g} s" if ra is not None else ""
            raise _Stop(Outcome(True, "overloaded", retry_after=ra, error=f"{self.name} is overloaded ({detail}): "
                                f"this is the provider's state, not your key's; try again later{wait}"))
        if resp.status == 429:
            ra = _retry_after(resp)
            wait = f"; retry after {ra:g} s" if ra is not None else ""
            raise _Stop(Outcome(True, "rate_limited", retry_after=ra,
                                error=f"{self.name} is rate limiting this key ({detail}){wait}"))
        raise _Stop(Outcome(True, "unreachable", error=f"{self.name} answered {detail} for {path.split('?')[0]}; "
                            "check the base URL in [llm] or the provider's status page"))

    def json(self, resp: Response, what: str) -> Any:
        try:
            return resp.json()
        except ProbeError:
            raise _Stop(Outcome(True, "unreachable", error=f"{self.name} answered {what} but not with JSON; "
                                "is the base URL right?")) from None

    def listing(self, body: Any, key: str, id_key: str) -> list[str]:
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _Stop(Outcome(True, "unreachable", error=f"{self.name} answered, but without a model list; "
                                "is the base URL right?"))
        return [str(m[id_key]) for m in items if isinstance(m, dict) and id_key in m]

    # -- the providers ---------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            outcome = getattr(self, "check_" + self.ps.name)()
        except _Stop as stop:
            outcome = stop.outcome
        outcome.timings = self.timings
        return outcome

    def valid(self, models: list[str], **kw) -> Outcome:
        return Outcome(True, "valid", models=models, model_count=len(models), **kw)

    def check_openai(self) -> Outcome:
        body = self.json(self.get("/models", {"Authorization": f"Bearer {self.ps.key}"}), "/models")
        return self.valid(self.listing(body, "data", "id"))

    def check_anthropic(self) -> Outcome:
        headers = {"x-api-key": self.ps.key or "", "anthropic-version": ANTHROPIC_VERSION}
        models: list[str] = []
        after = None
        for _ in range(MAX_PAGES):
            path = "/v1/models?limit=1000" + (f"&after_id={after}" if after else "")
            body = self.json(self.get(path, headers), "/v1/models")
            models += self.listing(body, "data", "id")
            if not body.get("has_more") or not body.get("last_id"):
                break
            after = body["last_id"]
        return self.valid(models)

    def check_azure(self) -> Outcome:
        path = f"/openai/models?api-version={self.ps.api_version}"
        body = self.json(self.get(path, {"api-key": self.ps.key or ""}), "/openai/models")
        return self.valid(self.listing(body, "data", "id"))

    def ready_as(self, models: list[str], loaded: set[str], how_it_wakes: str, **kw) -> Outcome:
        """Valid, or sleeping where the model that matters is not loaded: the active model when
        this provider lists it, else any model (nothing loaded at all means the first request waits)."""
        wanted = _match(self.active_model, models)
        if wanted is not None:
            asleep = _match(wanted, sorted(loaded)) is None
        else:
            asleep = bool(models) and not loaded
        o = self.valid(models, **kw)
        if asleep:
            o.state = "sleeping"
            o.reason = f"{wanted} is not loaded; {how_it_wakes}" if wanted else f"no model is loaded; {how_it_wakes}"
        return o

    def check_ollama(self) -> Outcome:
        version = self.json(self.get("/api/version"), "/api/version")
        if not isinstance(version, dict) or "version" not in version:
            raise _Stop(Outcome(True, "unreachable", error="the server answered /api/version, but not as Ollama does"))
        models = self.listing(self.json(self.get("/api/tags"), "/api/tags"), "models", "name")
        loaded: list[dict] | None = None
        vram = None
        try:
            ps = self.json(self.get("/api/ps"), "/api/ps")
            running = ps.get("models") if isinstance(ps, dict) else None
            if isinstance(running, list):
                loaded = [{"name": m.get("name"), "size_vram": m.get("size_vram"),
                           "context_length": m.get("context_length"), "expires_at": m.get("expires_at")}
                          for m in running[:MAX_ROUTER_MODELS] if isinstance(m, dict)]
                sizes = [m["size_vram"] for m in loaded if isinstance(m["size_vram"], int)]
                vram = sum(sizes) if loaded and len(sizes) == len(loaded) else (0 if not loaded else None)
        except _Stop:
            pass  # /api/ps is extra (older Ollama lacks it); the provider is judged by /api/tags
        extra: dict[str, Any] = {"loaded": loaded or [], "vram_used_bytes": vram}
        try:
            # Newer Ollama: {"cloud": {"disabled": bool, "source": str}}. It says nothing about
            # readiness; it is shown because cloud models vanish from use when it is disabled.
            status = self.json(self.get("/api/status"), "/api/status")
            cloud = status.get("cloud") if isinstance(status, dict) else None
            if isinstance(cloud, dict) and isinstance(cloud.get("disabled"), bool):
                extra["cloud_disabled"] = cloud["disabled"]
        except _Stop:
            pass  # older Ollama: 404
        version_text = str(version["version"])[:40]
        if loaded is None:  # cannot tell what is loaded: do not guess
            return self.valid(models, version=version_text, extra=extra)
        return self.ready_as(models, {str(m["name"]) for m in loaded},
                             "Ollama loads it on the first request (it unloads after keep_alive)",
                             version=version_text, extra=extra)

    def check_lmstudio(self) -> Outcome:
        headers = {"Authorization": f"Bearer {self.ps.key}"} if self.ps.key else None
        root = self.ps.url[:-3] if self.ps.url.endswith("/v1") else self.ps.url
        resp = self.get("/api/v1/models", headers, ok_statuses=(200, 404), base=root)
        if resp.status == 200:
            body = self.json(resp, "/api/v1/models")
            items = body.get("models") if isinstance(body, dict) else None
            if isinstance(items, list):  # LM Studio 0.4+
                models, loaded, instances = [], set(), []
                for m in items:
                    if not isinstance(m, dict) or not isinstance(m.get("key"), str):
                        continue
                    models.append(m["key"])
                    inst = m.get("loaded_instances")
                    if isinstance(inst, list) and inst:
                        loaded.add(m["key"])
                        for i in inst[:4]:
                            i = i if isinstance(i, dict) else {}
                            cfg = i.get("config") if isinstance(i.get("config"), dict) else {}
                            instances.append({"model": m["key"], "id": str(i.get("id", ""))[:120],
                                              "context_length": cfg.get("context_length")})
                return self.ready_as(models, loaded, "LM Studio loads it on the first request "
                                     "(just-in-time loading, on by default)",
                                     extra={"api": "v1", "loaded": instances[:MAX_ROUTER_MODELS]})
        # Older LM Studio (before 0.4): the OpenAI-compatible list, which says nothing of loading.
        return self.valid(self.listing(self.json(self.get("/models", headers), "/models"), "data", "id"),
                          extra={"api": "openai"})

    def check_llamacpp(self) -> Outcome:
        headers = {"Authorization": f"Bearer {self.ps.key}"} if self.ps.key else None
        health = self.get("/health", headers, ok_statuses=(200, 503))
        if health.status == 503:
            msg = _error_message(health)
            if msg.lower() != "loading model":
                raise _Stop(Outcome(True, "unreachable", error="llama.cpp answered /health with HTTP 503"
                                    f"{' (' + msg + ')' if msg else ''}; see its console"))
            # Still loading its model: alive, not ready. /models may not answer yet (older builds 503 it).
            return Outcome(True, "loading", reason="llama.cpp: Loading model (/health HTTP 503)")
        props = self.get("/props", headers, ok_statuses=(200, 404, 501))
        info = {}
        if props.status == 200:
            body = self.json(props, "/props")
            info = body if isinstance(body, dict) else {}
        if info.get("role") == "router":
            return self._llamacpp_router(headers)
        build = info.get("build_info")
        o = self.valid(self.listing(self.json(self.get("/v1/models", headers), "/v1/models"), "data", "id"),
                       version=build[:40] if isinstance(build, str) and build else None)
        if info.get("is_sleeping") is True:
            o.state, o.reason = "sleeping", "llama.cpp is sleeping (--sleep-idle-seconds); the next request reloads it"
        return o

    def _llamacpp_router(self, headers) -> Outcome:
        """Router mode (llama-server without -m): one child server per model, each with a status
        unloaded | loading | loaded | sleeping (newer builds also downloading | downloaded),
        `failed` with an exit code when it could not load. Only GET /models is asked: a request
        naming a model would load it."""
        body = self.json(self.get("/models", headers), "/models")
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _Stop(Outcome(True, "unreachable", error="llama.cpp router answered /models without a model list"))
        states: dict[str, str] = {}
        failed: dict[str, Any] = {}
        for m in items:
            if not isinstance(m, dict) or "id" not in m:
                continue
            st = m.get("status") if isinstance(m.get("status"), dict) else {}
            name = str(m["id"])[:200]
            states[name] = str(st.get("value", "unknown"))[:20]
            if st.get("failed"):
                failed[name] = st.get("exit_code")
        models = list(states)
        extra = {"mode": "router", "model_states": [{"id": n, "status": v, **({"failed": True} if n in failed else {})}
                                                    for n, v in list(states.items())[:MAX_ROUTER_MODELS]]}
        o = self.valid(models, extra=extra)
        wanted = _match(self.active_model, models)
        looked = [wanted] if wanted is not None else models
        if wanted is not None and wanted in failed:
            raise _Stop(Outcome(True, "failed", models=models, model_count=len(models), extra=extra,
                                error=f"llama.cpp router: {wanted} failed to load (exit code {failed[wanted]}); "
                                "see the router's console"))
        values = {states[n] for n in looked}
        if not looked or "loaded" in values:
            return o
        if values & {"loading", "downloading", "downloaded"}:
            o.state, o.reason = "loading", f"llama.cpp router: {wanted or 'a model'} is loading"
        elif values & {"sleeping", "unloaded"}:
            o.state = "sleeping"
            o.reason = (f"llama.cpp router: {wanted or 'no model is loaded'}"
                        f"{' is ' + states[wanted] if wanted else ''}; the router loads it on the first request "
                        "(unless started with --no-models-autoload)")
        return o


def _match(wanted: str | None, names: list[str]) -> str | None:
    """The listed name for `wanted`: exact, or with Ollama's implied ":latest"."""
    if not wanted:
        return None
    for n in names:
        if n == wanted or n == f"{wanted}:latest" or wanted == f"{n}:latest":
            return n
    return None


def _error_message(resp: Response) -> str:
    """llama.cpp's own error message (its 503 says "Loading model"); short and plain only."""
    try:
        body = resp.json()
    except ProbeError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg if isinstance(msg, str) and re.fullmatch(r"[\w .,:()'-]{1,80}", msg) else ""


# -- the probe ---------------------------------------------------------------------------
class LLMProbe(Probe):
    kind = "llm"

    def __init__(self, service: str, settings: dict) -> None:
        super().__init__(service, settings)
        section = settings.get("llm") or {}
        self.active_model = section.get("active_model") or None
        self.active_provider = section.get("active_provider") or None
        self.autodetect = section.get("autodetect", True)
        self.providers = resolve(section)
        self._held: dict[str, tuple[float, Outcome]] = {}  # rate-limited: leave alone until retry-after
        install_log_redaction()
        for warning in settings.get("warnings") or ():
            log.warning("%s", warning)

    @property
    def display_name(self) -> str:
        return "the language-model providers"

    def _check_one(self, ps: ProviderSettings) -> Outcome:
        if not ps.enabled:
            return Outcome(False, "not_configured", error=f"disabled in [llm.{ps.name}]")
        if ps.problem:
            return Outcome(False, "not_configured", error=f"{NAMES[ps.name]}: {ps.problem}")
        if ps.name in KEY_HINT and not ps.key:
            return Outcome(False, "not_configured")
        if ps.name in LOCAL and not ps.explicit and not self.autodetect:
            return Outcome(False, "not_configured")
        held = self._held.get(ps.name)
        now = time.monotonic()
        if held and now < held[0]:
            return replace(held[1], retry_after=round(held[0] - now, 1), timings=[])
        outcome = self._check_at(ps)
        if ps.name in LOCAL and not ps.explicit and outcome.state == "unreachable":
            # Auto-detection found nothing there: not a fault, just not in use.
            return Outcome(False, "not_configured", timings=outcome.timings)
        if outcome.state in ("rate_limited", "overloaded") and outcome.retry_after:
            self._held[ps.name] = (now + min(outcome.retry_after, 600.0), outcome)
        return outcome

    def _check_at(self, ps: ProviderSettings) -> Outcome:
        """One check; with several candidate URLs, the first where something answers wins."""
        if not ps.candidates:
            return ProviderCheck(ps, self.timeout, self.active_model).run()
        timings: list[Timing] = []
        tried: list[tuple[str, Outcome]] = []
        for url in ps.candidates:
            outcome = ProviderCheck(replace(ps, url=url), self.timeout, self.active_model).run()
            timings += outcome.timings
            tried.append((url, outcome))
            if outcome.state != "unreachable":
                break
        # Something that answered (even wrongly) says more than a refused port.
        url, outcome = next((t for t in tried if t[1].state != "unreachable"), None) or next(
            (t for t in tried if "refused" not in t[1].error), tried[0])
        if all("refused" in o.error for _, o in tried):
            ports = " or ".join(u.rsplit(":", 1)[-1] for u in ps.candidates)
            outcome.error = (f"{NAMES[ps.name]}: nothing answers on port {ports}; {START_HINT[ps.name]}, "
                             f"or set [llm.{ps.name}] url")
        outcome.timings, outcome.url = timings, url
        return outcome

    def check(self) -> CheckResult:
        # Providers are independent and some are far away: ask them all at once.
        with ThreadPoolExecutor(len(self.providers)) as pool:
            outcomes = dict(zip(self.providers, pool.map(self._check_one, self.providers.values())))
        result = CheckResult(False)
        providers = {}
        for name, o in outcomes.items():
            result.timings += o.timings
            d = o.as_dict()
            url = o.url or self.providers[name].url
            if o.configured and url:
                d["url"] = safe_url(url)
            providers[name] = d
        configured = [n for n, o in outcomes.items() if o.configured]
        usable = [n for n in configured if outcomes[n].usable]
        result.capabilities = configured
        active_provider, available = self._active(outcomes)
        ollama = outcomes["ollama"]
        vram = ollama.extra.get("vram_used_bytes") if ollama.usable else None
        ollama_url = self.providers["ollama"].url if ollama.configured else ""
        result.details = {
            "active_model": self.active_model,
            "active_provider": active_provider,
            "active_model_available": available,
            "providers": providers,
            "resources": self.usage(vram, url=ollama_url),
        }
        versions = [f"{NAMES[n]} {outcomes[n].version}" for n in usable if outcomes[n].version]
        result.version = ", ".join(versions)
        if usable:
            result.healthy = True
            # The service is as ready as the provider the add-on will use; with none chosen,
            # ready when any usable provider is (the add-on can use that one).
            deciding = [active_provider] if active_provider in usable else usable
            states = {outcomes[n].readiness for n in deciding}
            result.readiness = "" if "" in states else "loading" if "loading" in states else "sleeping"
            if result.readiness:
                result.details["readiness_reason"] = redact("; ".join(
                    outcomes[n].reason for n in deciding if outcomes[n].reason))
            return result
        if not configured:
            result.reachable = True
            result.error_kind = "not_configured"
            result.error = ("no language-model provider is configured: set OPENAI_API_KEY or ANTHROPIC_API_KEY, "
                            "AZURE_OPENAI_API_KEY with AZURE_OPENAI_ENDPOINT, or start Ollama, LM Studio or "
                            "llama.cpp (see docs/configuration.md, [llm])")
            return result
        problems = {outcomes[n].state for n in configured}
        # Something answered with a verdict (error) rather than nothing answering (disconnected).
        result.reachable = bool(problems & set(ERROR_KINDS))
        result.error_kind = next((ERROR_KINDS[s] for s in ERROR_KINDS if s in problems), "unreachable")
        result.error = redact("; ".join(outcomes[n].error for n in configured if outcomes[n].error))
        return result

    def _active(self, outcomes: dict[str, Outcome]) -> tuple[str | None, bool | None]:
        if not self.active_model:
            return self.active_provider, None
        candidates = [self.active_provider] if self.active_provider else list(outcomes)
        for name in candidates:
            o = outcomes.get(name)
            if o and o.usable and _match(self.active_model, o.models) is not None:
                return name, True
        if any(outcomes[n].usable and outcomes[n].models for n in candidates if n in outcomes):
            return self.active_provider, False
        return self.active_provider, None  # cannot tell while its provider is not answering
