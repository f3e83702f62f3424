"""One TOML configuration file for every process (reference: docs/configuration.md).

Every key has a default, so no file is needed. A bad value never produces a traceback:
`load()` raises ConfigError naming the key and, where the file has it, the line.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .protocol import valid_service
from .sockets import Endpoints


class ConfigError(ValueError):
    """A configuration problem, worded for a person: which key, which line, what to do."""


# -- value checkers: each returns the cleaned value or raises ValueError(reason) -------
def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError("must be true or false")


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ValueError("must be a number greater than 0")
    return float(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a whole number of at least 1")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _http_url(v: Any) -> str:
    v = _text(v)
    u = urlparse(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {v!r}")
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"has a bad port: {v!r}") from None
    return v.rstrip("/")


# host:port with the host a name, an IPv4 address or a bracketed IPv6 one ([::1]), as ZeroMQ writes them.
_ENDPOINT = re.compile(r"tcp://(?:[^:\s\[\]]+|\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\]):\d{1,5}|ipc://\S+|inproc://\S+")


def _zmq_endpoint(v: Any) -> str:
    v = _text(v)
    if not _ENDPOINT.fullmatch(v):
        raise ValueError(f"must look like tcp://127.0.0.1:5581 or tcp://[::1]:5581, got {v!r}")
    return v


def _secret(v: Any) -> str:
    v = _text(v)
    if not v.strip():
        raise ValueError("must not be empty (leave the key out instead)")
    return v.strip()


def one_of(*choices: str):
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {v!r}")
        return v
    return check


# -- the schema ---------------------------------------------------------------------
# Each service: URL, whether it is watched, whether the add-on needs it, and how often.
SERVICE_KEYS: dict[str, Any] = {
    "url": _http_url,
    "enabled": _bool,
    "required": _bool,
    "interval": _positive,     # seconds between checks while up (backoff doubles it while down, to 30 s)
    "timeout": _positive,      # seconds one request may take, all included
    "flavour": _text,          # which probe: see FLAVOURS
    "failures_to_down": _count,  # consecutive failures before Disconnected (damping, both ways)
    "expect_title": _text,     # Gradio apps: the title (or a word of it) the app on the port must have
    "websocket": _bool,        # ComfyUI: hold /ws for sub-second detection (false: poll only)
}

# The probe kinds (probes/registry.py maps each to a class; a test keeps the two in step).
FLAVOURS = ("comfyui", "wan2gp", "webui", "rvc-python", "audioldm", "gradio", "llm")

_COMMON = {"enabled": True, "interval": 2.0, "timeout": 2.0, "failures_to_down": 2}
DEFAULT_SERVICES: dict[str, dict[str, Any]] = {
    "comfyui": {**_COMMON, "url": "http://127.0.0.1:8188", "required": True, "flavour": "comfyui"},
    "wan2gp": {**_COMMON, "url": "http://127.0.0.1:7860", "required": False, "flavour": "wan2gp", "timeout": 3.0},
    "rvc": {**_COMMON, "url": "http://127.0.0.1:7865", "required": False, "flavour": "webui", "timeout": 3.0},
    "audioldm": {**_COMMON, "url": "http://127.0.0.1:7863", "required": False, "flavour": "audioldm", "timeout": 3.0},
    # Cloud APIs: every minute is plenty, and gentle on rate limits. The URLs are per provider, in [llm].
    "llm": {**_COMMON, "url": "", "required": False, "flavour": "llm", "interval": 60.0, "timeout": 10.0},
}
# rvc-python's API server listens on 5050 (`python -m rvc_python api -p 5050`), not on the WebUI's 7865.
FLAVOUR_URLS = {"rvc-python": "http://127.0.0.1:5050"}

# [llm]: which model the add-on uses, and one optional table per provider.
LLM_PROVIDERS = ("openai", "anthropic", "azure", "ollama", "lmstudio", "llamacpp")
LLM_KEYS: dict[str, Any] = {
    "active_model": _text,       # e.g. "gpt-4o" or "claude-sonnet-4-5": shown, and looked for in the lists
    "active_provider": one_of(*LLM_PROVIDERS),
    "autodetect": _bool,         # look for Ollama / LM Studio / llama.cpp on their default ports
}
LLM_PROVIDER_KEYS: dict[str, Any] = {
    "enabled": _bool,
    "url": _http_url,            # base URL (OpenAI-style ones end in /v1; Azure: your resource endpoint)
    "api_key": _secret,          # prefer the environment variable; a key here makes the file a secret
    "api_version": _text,        # Azure only
}

# Top-level tables. `bus`, `services` and `llm` are validated here; the others belong to
# the part that uses them (aggregator/alerts/prices: aggregator/settings.py), which
# validates `Config.sections[name]` with the checkers above.
KNOWN_SECTIONS = ("bus", "services", "llm", "aggregator", "alerts", "prices")

BUS_KEYS = {"events": _zmq_endpoint, "snapshots": _zmq_endpoint, "requests": _zmq_endpoint}


@dataclass
class Config:
    endpoints: Endpoints = field(default_factory=Endpoints)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # other parts' sections, validated by them
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # not fatal, but a person should hear of them

    def service(self, name: str) -> dict[str, Any]:
        return self.services[name]


def _toml():
    """The TOML parser: the standard library's from Python 3.11, tomli (the same code, which
    the legacy add-on bundles) on 3.10. Imported only when a file is parsed, so importing
    this module never needs either."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib


def default_path() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("MD_HEALTH_CONFIG") or Path(user_config_dir("movie-director-health")) / "config.toml")


def _line_of(text: str, section: str, key: str) -> int | None:
    """Best effort: the line where `key` is set inside [section], or where the table
    [section.key] starts (the TOML parser gives no positions)."""
    current = ""
    table = f"{section}.{key}" if section else key
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
            if current == table or current.startswith(table + "."):
                return number
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
        elif not section and not current and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return None


def _fail(text: str, where: Path | None, section: str, key: str, reason: str) -> ConfigError:
    line = _line_of(text, section, key) if text else None
    place = f"{where}" if where else "config"
    if line:
        place += f", line {line}"
    name = f"{section}.{key}" if section else key
    return ConfigError(f"{place}: {name} {reason}")


def _validate_table(raw: Any, schema: dict[str, Any], section: str, text: str, where: Path | None,
                    base: dict[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(text, where, "", section, "must be a table ([" + section + "])")
    out = dict(base or {})
    for key, value in raw.items():
        check = schema.get(key)
        if check is None:
            known = ", ".join(sorted(schema))
            raise _fail(text, where, section, key, f"is not a known key (known: {known})")
        try:
            out[key] = check(value)
        except ValueError as exc:
            raise _fail(text, where, section, key, str(exc)) from None
    return out


def load(path: str | Path | None = None, *, text: str | None = None) -> Config:
    """Load and validate the config. A missing default file means all defaults."""
    where: Path | None = None
    if text is None:
        where = Path(path) if path else default_path()
        if not where.exists():
            if path:  # a file the user named must exist
                raise ConfigError(f"{where}: no such config file")
            text = ""
        else:
            try:
                text = where.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: cannot read config ({exc.__class__.__name__}: {exc})") from None
    toml = _toml()
    try:
        raw = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{where or 'config'}: not valid TOML: {exc}") from None

    cfg = Config(path=where)
    for name in raw:
        if name not in KNOWN_SECTIONS:
            raise _fail(text, where, "", name, f"is not a known section (known: {', '.join(KNOWN_SECTIONS)})")
    bus = _validate_table(raw.pop("bus", {}), BUS_KEYS, "bus", text, where)
    cfg.endpoints = Endpoints.from_env(Endpoints(**{k: bus[k] for k in bus}))

    services = {name: dict(values) for name, values in DEFAULT_SERVICES.items()}
    raw_services = raw.pop("services", {})
    if not isinstance(raw_services, dict):
        raise _fail(text, where, "", "services", "must be a table of [services.<name>] tables")
    for name, table in raw_services.items():
        section = f"services.{name}"
        if not valid_service(name):  # the name becomes a topic segment: snapshot.<name>
            raise _fail(text, where, "", section, "is not a usable service name: use 1-64 letters, digits, "
                        "_ and -, starting with a letter, digit or _ (no dots or spaces), e.g. [services.comfyui_2]")
        base = services.get(name, {**_COMMON, "required": False, "flavour": name})
        values = _validate_table(table, SERVICE_KEYS, section, text, where, base)
        if values["flavour"] not in FLAVOURS:
            key = "flavour" if "flavour" in table else ""
            raise _fail(text, where, section if key else "services", key or name,
                        f"{'is' if key else 'has flavour'} {values['flavour']!r}, which no probe serves "
                        f"(known: {', '.join(FLAVOURS)}); set flavour = \"...\"")
        if "url" not in table and values["flavour"] in FLAVOUR_URLS and values["flavour"] != base.get("flavour"):
            values["url"] = FLAVOUR_URLS[values["flavour"]]
        if not values.get("url") and values["flavour"] != "llm":
            raise _fail(text, where, "services", name, "needs a url (e.g. url = \"http://127.0.0.1:7860\")")
        services[name] = values
    for name, values in services.items():
        _apply_env(name, values)
    cfg.services = services
    if "llm" in raw:
        raw["llm"] = _validate_llm(raw["llm"], text, where)
        if where is not None and _has_key(raw["llm"]) and _readable_by_others(where):
            cfg.warnings.append(f"{where} holds an API key and other users can read it: run `chmod 600 {where}`, "
                                "or move the key to its environment variable")
    cfg.sections = raw
    from .security import curve_dir, loose_permissions, setup_problem  # late: security imports this module

    if problem := setup_problem():  # keys named by the environment: a clear error now, not a traceback later
        raise ConfigError(problem)
    keys = curve_dir()
    if keys is not None and loose_permissions(keys):
        cfg.warnings.append(f"other users can read the CURVE keys in {keys}, so they could talk to the bus as you: "
                            f"run `chmod -R go-rwx {keys}`")
    return cfg


def _validate_llm(raw: Any, text: str, where: Path | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(text, where, "", "llm", "must be a table ([llm])")
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    out = _validate_table(top, LLM_KEYS, "llm", text, where)
    for name, table in raw.items():
        if not isinstance(table, dict):
            continue
        if name not in LLM_PROVIDERS:
            raise _fail(text, where, "llm", name, f"is not a known provider (known: {', '.join(LLM_PROVIDERS)})")
        out[name] = _validate_table(table, LLM_PROVIDER_KEYS, f"llm.{name}", text, where)
    return out


def _has_key(llm: dict[str, Any]) -> bool:
    return any(isinstance(t, dict) and t.get("api_key") for t in llm.values())


def _readable_by_others(path: Path) -> bool:
    """POSIX permission bits only; on Windows, ACLs decide and the user profile is private."""
    if os.name != "posix":
        return False
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def _apply_env(name: str, values: dict[str, Any]) -> None:
    """MD_HEALTH_<SERVICE>_URL overrides a service URL (handy for tests and one-off runs)."""
    url = os.environ.get(f"MD_HEALTH_{name.upper()}_URL")
    if url:
        try:
            values["url"] = _http_url(url)
        except ValueError as exc:
            raise ConfigError(f"environment MD_HEALTH_{name.upper()}_URL {exc}") from None
