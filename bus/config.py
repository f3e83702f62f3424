"""One TOML configuration file for every process (reference: docs/configuration.md).

Every key has a default, so no file is needed. A bad value never produces a traceback:
`load()` raises ConfigError naming the key and, where the file has it, the line.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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


def _zmq_endpoint(v: Any) -> str:
    v = _text(v)
    if not re.fullmatch(r"(tcp://[^:\s]+:\d{1,5}|ipc://\S+|inproc://\S+)", v):
        raise ValueError(f"must look like tcp://127.0.0.1:5581, got {v!r}")
    return v


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
    "interval": _positive,     # seconds between checks
    "timeout": _positive,      # seconds a check may take, all included
    "flavour": _text,          # e.g. RVC: "webui" or "rvc-python"
    "failures_to_down": _count,  # consecutive failures before Disconnected (damping)
}

DEFAULT_SERVICES: dict[str, dict[str, Any]] = {
    "comfyui": {"url": "http://127.0.0.1:8188", "enabled": True, "required": True,
                "interval": 2.0, "timeout": 2.0, "flavour": "comfyui", "failures_to_down": 2},
}

# Top-level tables. `bus` and `services` are validated here; the others belong to the part
# that uses them (llm: probes/llm, aggregator/alerts/prices: aggregator/settings.py), which
# validates `Config.sections[name]` with the checkers above.
KNOWN_SECTIONS = ("bus", "services", "llm", "aggregator", "alerts", "prices")

BUS_KEYS = {"events": _zmq_endpoint, "snapshots": _zmq_endpoint, "requests": _zmq_endpoint}


@dataclass
class Config:
    endpoints: Endpoints = field(default_factory=Endpoints)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # other parts' sections, validated by them
    path: Path | None = None

    def service(self, name: str) -> dict[str, Any]:
        return self.services[name]


def default_path() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("MD_HEALTH_CONFIG") or Path(user_config_dir("movie-director-health")) / "config.toml")


def _line_of(text: str, section: str, key: str) -> int | None:
    """Best effort: the line where `key` is set inside [section] (tomllib gives no positions)."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
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
        base = services.get(name, {"enabled": True, "required": False, "interval": 2.0, "timeout": 2.0,
                                   "failures_to_down": 2, "flavour": name})
        services[name] = _validate_table(table, SERVICE_KEYS, f"services.{name}", text, where, base)
        if "url" not in services[name] and name in DEFAULT_SERVICES:
            services[name]["url"] = DEFAULT_SERVICES[name]["url"]
    for name, values in services.items():
        _apply_env(name, values)
    cfg.services = services
    cfg.sections = raw
    return cfg


def _apply_env(name: str, values: dict[str, Any]) -> None:
    """MD_HEALTH_<SERVICE>_URL overrides a service URL (handy for tests and one-off runs)."""
    url = os.environ.get(f"MD_HEALTH_{name.upper()}_URL")
    if url:
        try:
            values["url"] = _http_url(url)
        except ValueError as exc:
            raise ConfigError(f"environment MD_HEALTH_{name.upper()}_URL {exc}") from None
