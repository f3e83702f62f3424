"""Language-model providers, all in one probe (service "llm"): is each configured provider
reachable, is its key valid, which models does it offer. Never spends a token: only the
free model-listing endpoints are called.

  OpenAI      GET {base}/models                      Authorization: Bearer KEY   base .../v1
  Anthropic   GET {base}/v1/models?limit=&after_id=  x-api-key, anthropic-version: 2023-06-01
  Azure       GET {endpoint}/openai/models?api-version=2024-10-21              api-key: KEY
  Ollama      GET /api/version, /api/tags, /api/ps (loaded models and their VRAM)
  LM Studio   GET {base}/models                      base http://127.0.0.1:1234/v1
  llama.cpp   GET /health (503 while loading), /v1/models

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
from dataclasses import dataclass, field
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
    state: str                 # valid | invalid | rate_limited | unreachable | not_configured
    models: list[str] = field(default_factory=list)
    model_count: int | None = None
    retry_after: float | None = None
    error: str = ""
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "state": self.state, "model_count": self.model_count,
                "models": self.models[:MAX_IDS_ON_BUS], "retry_after": self.retry_after,
                "error": redact(self.error), **({"version": self.version} if self.version else {}), **self.extra}


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _retry_after(resp: Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; rare for these APIs


def _error_code(resp: Response) -> str:
    """The provider's machine-readable error code or type, if it gave one (never its message)."""
    try:
        body = resp.json()
    except ProbeError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    code = ""
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or ""
    elif isinstance(err, str):
        code = err
    code = str(code)
    return code if re.fullmatch(r"[A-Za-z0-9_.\-]{1,60}", code) else ""


class ProviderCheck:
    """One check of one provider; `get()` records timings and turns HTTP answers into outcomes."""

    def __init__(self, ps: ProviderSettings, timeout: float) -> None:
        self.ps = ps
        self.timeout = timeout
        self.name = NAMES[ps.name]
        self.timings: list[Timing] = []

    def get(self, path: str, headers: dict[str, str] | None = None, ok_statuses=(200,)) -> Response:
        label = f"{self.ps.name} {path.split('?')[0]}"
        start = time.perf_counter()
        try:
            resp = get(self.ps.url + path, self.timeout, headers=headers)
        except ProbeError as exc:
            self.timings.append(Timing(label, (time.perf_counter() - start) * 1000, False, exc.kind))
            hint = START_HINT.get(self.ps.name, "check your network and the base URL")
            raise _Stop(Outcome(True, "unreachable", error=f"{self.name}: {exc.message}; {hint}")) from None
        ok = resp.status in ok_statuses
        kind = None if ok else ("auth" if resp.status in (401, 403) else
                                "rate_limited" if resp.status in (429, 529) else "http_status")
        self.timings.append(Timing(label, resp.duration_ms, ok, kind))
        if ok:
            return resp
        code = _error_code(resp)
        detail = f"HTTP {resp.status}{', ' + code if code else ''}"
        if resp.status in (401, 403):
            where = KEY_HINT.get(self.ps.name, f"[llm.{self.ps.name}] api_key")
            raise _Stop(Outcome(True, "invalid", error=f"{self.name} rejected the API key ({detail}): "
                                f"check {where}, or create a new key"))
        if resp.status in (429, 529):
            ra = _retry_after(resp)
            wait = f"; retry after {ra:g} s" if ra is not None else ""
            what = "is overloaded" if resp.status == 529 else "is rate limiting this key"
            raise _Stop(Outcome(True, "rate_limited", retry_after=ra, error=f"{self.name} {what} ({detail}){wait}"))
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

    def check_ollama(self) -> Outcome:
        version = self.json(self.get("/api/version"), "/api/version")
        if not isinstance(version, dict) or "version" not in version:
            raise _Stop(Outcome(True, "unreachable", error="the server answered /api/version, but not as Ollama does"))
        models = self.listing(self.json(self.get("/api/tags"), "/api/tags"), "models", "name")
        loaded: list[dict] = []
        vram = None
        try:
            ps = self.json(self.get("/api/ps"), "/api/ps")
            running = ps.get("models") if isinstance(ps, dict) else None
            if isinstance(running, list):
                loaded = [{"name": m.get("name"), "size_vram": m.get("size_vram")} for m in running
                          if isinstance(m, dict)]
                sizes = [m["size_vram"] for m in loaded if isinstance(m["size_vram"], int)]
                vram = sum(sizes) if loaded and len(sizes) == len(loaded) else (0 if not loaded else None)
        except _Stop:
            pass  # /api/ps is extra (older Ollama lacks it); the provider is judged by /api/tags
        return self.valid(models, version=str(version["version"]), extra={"loaded": loaded, "vram_used_bytes": vram})

    def check_lmstudio(self) -> Outcome:
        headers = {"Authorization": f"Bearer {self.ps.key}"} if self.ps.key else None
        return self.valid(self.listing(self.json(self.get("/models", headers), "/models"), "data", "id"))

    def check_llamacpp(self) -> Outcome:
        headers = {"Authorization": f"Bearer {self.ps.key}"} if self.ps.key else None
        health = self.get("/health", headers, ok_statuses=(200, 503))
        if health.status == 503:
            raise _Stop(Outcome(True, "unreachable", error="llama.cpp is still loading its model (HTTP 503); "
                                "wait for it to finish"))
        return self.valid(self.listing(self.json(self.get("/v1/models", headers), "/v1/models"), "data", "id"))


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
            o = held[1]
            return Outcome(True, o.state, o.models, o.model_count, round(held[0] - now, 1), o.error, o.version, o.extra)
        outcome = ProviderCheck(ps, self.timeout).run()
        if ps.name in LOCAL and not ps.explicit and outcome.state == "unreachable":
            # Auto-detection found nothing there: not a fault, just not in use.
            return Outcome(False, "not_configured", timings=outcome.timings)
        if outcome.state == "rate_limited" and outcome.retry_after:
            self._held[ps.name] = (now + min(outcome.retry_after, 600.0), outcome)
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
            if o.configured and self.providers[name].url:
                d["url"] = safe_url(self.providers[name].url)
            providers[name] = d
        configured = [n for n, o in outcomes.items() if o.configured]
        valid = [n for n in configured if outcomes[n].state == "valid"]
        result.capabilities = configured
        active_provider, available = self._active(outcomes)
        vram = outcomes["ollama"].extra.get("vram_used_bytes") if outcomes["ollama"].state == "valid" else None
        result.details = {
            "active_model": self.active_model,
            "active_provider": active_provider,
            "active_model_available": available,
            "providers": providers,
            "resources": self.usage(vram, url=self.providers["ollama"].url if outcomes["ollama"].configured else ""),
        }
        versions = [f"{NAMES[n]} {outcomes[n].version}" for n in valid if outcomes[n].version]
        result.version = ", ".join(versions)
        if valid:
            result.healthy = True
            return result
        if not configured:
            result.reachable = True
            result.error_kind = "not_configured"
            result.error = ("no language-model provider is configured: set OPENAI_API_KEY or ANTHROPIC_API_KEY, "
                            "AZURE_OPENAI_API_KEY with AZURE_OPENAI_ENDPOINT, or start Ollama, LM Studio or "
                            "llama.cpp (see docs/configuration.md, [llm])")
            return result
        problems = [outcomes[n] for n in configured]
        result.reachable = any(o.state in ("invalid", "rate_limited") for o in problems)
        result.error_kind = ("auth" if any(o.state == "invalid" for o in problems) else
                             "rate_limited" if result.reachable else "unreachable")
        result.error = redact("; ".join(o.error for o in problems if o.error))
        return result

    def _active(self, outcomes: dict[str, Outcome]) -> tuple[str | None, bool | None]:
        if not self.active_model:
            return self.active_provider, None
        candidates = [self.active_provider] if self.active_provider else list(outcomes)
        for name in candidates:
            o = outcomes.get(name)
            if o and o.state == "valid" and self.active_model in o.models:
                return name, True
        if any(outcomes[n].state == "valid" for n in candidates if n in outcomes):
            return self.active_provider, False
        return self.active_provider, None  # cannot tell while its provider is not answering
