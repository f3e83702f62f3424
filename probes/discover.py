"""`md-health discover`: which backends answer on this machine's usual ports, and where.

Ports collide (Wan2GP and AudioLDM both default to 7860), move (RVC takes the next free port
when 7865 is busy) and change between releases (llama.cpp: 8080, announced to become 9931).
This checks the usual local ports, all at once with short deadlines, fingerprints what
answers with the same free, read-only requests the probes make, and says what it found:

  ComfyUI     GET /system_stats        {"system": {...}, "devices": [...]}
  Gradio      GET /config              version, title, <h1> text and api names (probes.gradio),
                                       which tell Wan2GP, RVC WebUI and AudioLDM apart
  Ollama      GET /api/version         {"version": "..."}
  llama.cpp   GET /health, /props      {"status": "ok"} or 503 "Loading model"; /props has
                                       default_generation_settings, or role "router"
  LM Studio   GET /api/v1/models (0.4+, {"models": [...]}), else /v1/models
  rvc-python  GET /models              {"models": [...]} (its API server, port 5050)

It only ever scans loopback, unless the user names hosts with --host (a host, never a range).
`--write` puts the found URLs into the config file as `url` keys of the right tables, leaving
every other line (comments included) as it was; where that cannot be done safely it says so
and prints the lines to add instead.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .http import ProbeError, get

DEFAULT_PORTS = (*range(7860, 7871), 8188, 8189, 8190, 5050, 11434, 1234, 8080, 9931)
DEFAULT_TIMEOUT = 1.5       # seconds per request to a port that accepted the connection
CONNECT_TIMEOUT = 0.3       # a closed port on loopback refuses at once; a filtered remote one costs this
MAX_WORKERS = 32
MAX_HOSTS = 16
MAX_PORTS = 1024
CONFIG_MAX_BYTES = 32 << 20  # Wan2GP's /config is megabytes
MAX_TEXT = 120               # characters of a title or detail shown

# Where a found backend goes in the config: (table, what it means).
GRADIO_SERVICES = ("wan2gp", "rvc", "audioldm")
LLM_KINDS = ("ollama", "lmstudio", "llamacpp")
NAMES = {"comfyui": "ComfyUI", "wan2gp": "Wan2GP", "rvc": "RVC WebUI", "audioldm": "AudioLDM",
         "ollama": "Ollama", "lmstudio": "LM Studio", "llamacpp": "llama.cpp", "rvc-python": "rvc-python",
         "gradio": "a Gradio app"}


def _short(text: Any) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT - 1] + "\u2026"


def _json(url: str, timeout: float, max_bytes: int | None = None, ok=(200,)) -> tuple[int, Any]:
    """(status, parsed body or None). Raises ProbeError when nothing HTTP answers."""
    kw = {"max_bytes": max_bytes} if max_bytes else {}
    resp = get(url, timeout, **kw)
    if resp.status not in ok:
        return resp.status, None
    try:
        return resp.status, resp.json()
    except ProbeError:
        return resp.status, None


# -- fingerprints: each returns a finding or None --------------------------------------------
def _comfyui(base: str, timeout: float) -> dict | None:
    _, body = _json(base + "/system_stats", timeout)
    if not (isinstance(body, dict) and isinstance(body.get("system"), dict) and isinstance(body.get("devices"), list)):
        return None
    devices = [str(d.get("name", "?")) for d in body["devices"] if isinstance(d, dict)]
    return {"kind": "comfyui", "service": "comfyui", "url": base, "title": "ComfyUI",
            "version": body["system"].get("comfyui_version"), "detail": ", ".join(devices)}


def _gradio(base: str, timeout: float) -> dict | None:
    from .gradio import (AudioLDMProbe, GradioProbe, RVCWebUIProbe, Wan2GPProbe, named_endpoints,
                         ui_heading)

    resp = get(base + "/config", timeout, max_bytes=CONFIG_MAX_BYTES)
    login = {"kind": "unknown", "service": None, "url": base, "title": "", "version": None,
             "detail": "a login-protected Gradio app: the probes cannot pass its login; launch it without auth"}
    if resp.status in (401, 403) and b"not authenticated" in resp.body.lower():  # Gradio 3-5 with auth
        return login
    if resp.status != 200:
        return None
    try:
        cfg = resp.json()
    except ProbeError:
        return None
    if isinstance(cfg, dict) and cfg.get("auth_required") is True:  # Gradio 6 with auth: a stub config
        return login
    if not isinstance(cfg, dict) or not isinstance(cfg.get("version"), str) or not (
            "components" in cfg or "dependencies" in cfg):
        return None
    version = cfg["version"].strip()
    title = cfg.get("title") if isinstance(cfg.get("title"), str) else ""
    endpoints = named_endpoints(cfg)
    heading = ui_heading(cfg)
    text = resp.body.decode("utf-8", "replace")
    service = None
    # A real title decides; only an untitled app is judged by its endpoints and UI text, as the
    # probes judge it (GradioProbe.identify), so discovery and the probe never disagree.
    for cls in (Wan2GPProbe, RVCWebUIProbe, AudioLDMProbe):
        if cls(cls.kind, {"url": base}).identify(title, endpoints, text):
            service = cls.kind
            break
    return {"kind": "gradio", "service": service, "url": base,
            "title": _short(GradioProbe.describe(title, heading, version)), "version": version,
            "detail": f"{len(endpoints)} named endpoint{'s' * (len(endpoints) != 1)}"
                      + (f": {', '.join(endpoints[:6])}{', ...' if len(endpoints) > 6 else ''}" if endpoints else "")}


def _ollama(base: str, timeout: float) -> dict | None:
    _, body = _json(base + "/api/version", timeout)
    if not (isinstance(body, dict) and isinstance(body.get("version"), str) and len(body) <= 3):
        return None
    _, tags = _json(base + "/api/tags", timeout)
    models = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(models, list):
        return None  # /api/version alone is too common a path to trust
    return {"kind": "ollama", "service": "llm", "url": base, "title": "Ollama", "version": body["version"],
            "detail": f"{len(models)} model{'s' * (len(models) != 1)} pulled"}


def _llamacpp(base: str, timeout: float) -> dict | None:
    status, health = _json(base + "/health", timeout, ok=(200, 503))
    err = health.get("error") if isinstance(health, dict) else None
    loading = status == 503 and isinstance(err, dict) and err.get("message") == "Loading model"
    if not loading and not (status == 200 and isinstance(health, dict) and health.get("status") == "ok"):
        return None
    if loading:
        return {"kind": "llamacpp", "service": "llm", "url": base, "title": "llama.cpp", "version": None,
                "detail": "still loading its model"}
    _, props = _json(base + "/props", timeout)  # never with ?model=: a router would load that model
    if not isinstance(props, dict):
        return None
    if props.get("role") == "router":
        _, models = _json(base + "/models", timeout)
        data = models.get("data") if isinstance(models, dict) else None
        n = len(data) if isinstance(data, list) else 0
        detail = f"router mode, {n} model{'s' * (n != 1)}"
    elif "default_generation_settings" in props:
        detail = _short(props.get("model_alias") or os.path.basename(str(props.get("model_path") or "")))
    else:
        return None
    return {"kind": "llamacpp", "service": "llm", "url": base, "title": "llama.cpp",
            "version": _short(props.get("build_info")) or None, "detail": detail}


def _lmstudio(base: str, timeout: float) -> dict | None:
    _, body = _json(base + "/api/v1/models", timeout)
    items = body.get("models") if isinstance(body, dict) else None
    if isinstance(items, list) and all(isinstance(m, dict) and "key" in m for m in items):
        loaded = sum(1 for m in items if m.get("loaded_instances"))
        return {"kind": "lmstudio", "service": "llm", "url": base + "/v1", "title": "LM Studio", "version": None,
                "detail": f"{len(items)} models, {loaded} loaded"}
    # Before 0.4: only the OpenAI-compatible list, whose entries LM Studio marks as its own.
    _, body = _json(base + "/v1/models", timeout)
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and data and all(isinstance(m, dict) and m.get("owned_by") == "organization_owner"
                                               for m in data):
        return {"kind": "lmstudio", "service": "llm", "url": base + "/v1", "title": "LM Studio", "version": None,
                "detail": f"{len(data)} models"}
    return None


def _rvc_python(base: str, timeout: float) -> dict | None:
    _, body = _json(base + "/models", timeout)
    if not (isinstance(body, dict) and isinstance(body.get("models"), list) and len(body) <= 2):
        return None
    _, params = _json(base + "/params", timeout)
    if not isinstance(params, dict):
        return None
    return {"kind": "rvc-python", "service": "rvc", "url": base, "title": "rvc-python", "version": None,
            "detail": f"{len(body['models'])} voice models"}


# ComfyUI and Gradio first (most ports are theirs); llama.cpp before LM Studio, since both
# serve /v1/models.
FINGERPRINTS = (_comfyui, _gradio, _ollama, _llamacpp, _lmstudio, _rvc_python)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _fingerprint(host: str, port: int, timeout: float) -> dict | None:
    if not _listening(host, port):
        return None
    base = _url(host, port)
    for fp in FINGERPRINTS:
        try:
            found = fp(base, timeout)
        except ProbeError as exc:
            if exc.kind in ("timeout", "refused", "network"):
                # Accepts connections but does not answer HTTP in time (or went away): say so, stop.
                return {"kind": "unknown", "service": None, "url": base, "title": "", "version": None,
                        "detail": f"port open, but no HTTP answer ({exc.kind})"}
            continue  # too large, redirect...: not this one
        if found:
            return found
    return {"kind": "unknown", "service": None, "url": base, "title": "", "version": None,
            "detail": "answers, but is none of the backends this monitor knows"}


def scan(hosts=("127.0.0.1",), ports=DEFAULT_PORTS, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
    """Every (host, port) checked concurrently; what answered, in host then port order.
    Entries of kind "unknown" are ports that are open but serve none of the known backends."""
    pairs = [(h, p) for h in hosts for p in ports]
    if not pairs:
        return []
    with ThreadPoolExecutor(min(MAX_WORKERS, len(pairs)), thread_name_prefix="discover") as pool:
        results = list(pool.map(lambda hp: _fingerprint(hp[0], hp[1], timeout), pairs))
    return [r for r in results if r]


# -- the config file ---------------------------------------------------------------------
def table_of(found: dict) -> str | None:
    """The config table whose `url` a finding sets, or None when it fits no service."""
    if found["kind"] in LLM_KINDS:
        return f"llm.{found['kind']}"
    if found.get("service") in ("comfyui", *GRADIO_SERVICES):
        return f"services.{found['service']}"
    return None


def choose(found: list[dict]) -> dict[str, dict]:
    """One finding per config table: the first (lowest port) of each."""
    chosen: dict[str, dict] = {}
    for f in found:
        table = table_of(f)
        if table and table not in chosen:
            chosen[table] = f
    return chosen


class UnsafeEdit(Exception):
    """The file is written in a way this careful line edit does not handle."""


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s]+?)\s*\]\s*(?:#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_URL_LINE = re.compile(r"""^(\s*url\s*=\s*)("(?:[^"\\\n]|\\.)*"|'[^'\n]*')(\s*(?:#.*)?)$""")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable ASCII is a valid TOML basic string


def set_urls(text: str, urls: dict[str, str]) -> str:
    """`text` with `url = "..."` set in each named table, every other line unchanged.
    Raises UnsafeEdit where the file defines a table in a form a line edit could get wrong
    (dotted keys, inline tables, multi-line values, a url key written oddly)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    appended: list[str] = []
    for table, url in urls.items():
        parent, _, leaf = table.partition(".")
        headers = [i for i, ln in enumerate(lines) if (m := _HEADER.match(ln)) and
                   re.sub(r"\s+", "", m.group(1)) == table]
        for i, ln in enumerate(lines):
            s = ln.strip()
            if re.match(rf"{re.escape(parent)}\s*\.\s*{re.escape(leaf)}\s*[.=]", s) or re.match(
                    rf"{re.escape(leaf)}\s*(=\s*\{{|\.)", s) or re.match(rf'\[\s*{re.escape(parent)}\s*\.\s*["\']', s):
                raise UnsafeEdit(f"line {i + 1} sets {table} in a form this edit does not change safely")
        if len(headers) > 1:
            raise UnsafeEdit(f"[{table}] appears {len(headers)} times")
        if not headers:
            appended += ["\n", f"[{table}]\n", f"url = {_toml_string(url)}\n"]
            continue
        start = headers[0] + 1
        end = next((j for j in range(start, len(lines)) if _ANY_HEADER.match(lines[j])), len(lines))
        url_lines = [j for j in range(start, end) if re.match(r"\s*url\s*=", lines[j])]
        if not url_lines:
            lines.insert(start, f"url = {_toml_string(url)}\n")
            continue
        m = _URL_LINE.match(lines[url_lines[0]].rstrip("\r\n"))
        if len(url_lines) > 1 or not m:
            raise UnsafeEdit(f"line {url_lines[0] + 1}: the url of [{table}] is not a one-line string")
        ending = lines[url_lines[0]][len(lines[url_lines[0]].rstrip("\r\n")):]
        lines[url_lines[0]] = m.group(1) + _toml_string(url) + m.group(3) + ending
    return "".join(lines) + "".join(appended)


def _drop_urls(raw: dict, tables: list[str]) -> dict:
    out = json.loads(json.dumps(raw, default=str))
    for table in tables:
        parent, _, leaf = table.partition(".")
        t = out.get(parent, {}).get(leaf)
        if isinstance(t, dict):
            t.pop("url", None)
            if not t:
                out[parent].pop(leaf)
        if parent in out and not out[parent]:
            out.pop(parent)
    return out


def plan_write(text: str, chosen: dict[str, dict]) -> str:
    """The new file text, checked: it parses, bus/config.py accepts it, each url is what was
    found, and nothing else changed. Raises UnsafeEdit otherwise."""
    from bus.config import ConfigError, _toml, load

    toml = _toml()
    urls = {table: f["url"] for table, f in chosen.items()}
    try:
        before = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise UnsafeEdit(f"the file is not valid TOML now ({exc})") from None
    new = set_urls(text, urls)
    try:
        after = toml.loads(new)
        load(text=new)
    except (toml.TOMLDecodeError, ConfigError) as exc:
        raise UnsafeEdit(f"the edited file would not load ({exc})") from None
    for table, url in urls.items():
        parent, _, leaf = table.partition(".")
        if after.get(parent, {}).get(leaf, {}).get("url") != url:
            raise UnsafeEdit(f"[{table}] url did not come out as {url}")
    if _drop_urls(before, list(urls)) != _drop_urls(after, list(urls)):
        raise UnsafeEdit("the edit would change more than the url keys")
    return new


def write_config(path: Path, chosen: dict[str, dict]) -> str:
    """Edit (or create) the file in place, atomically, keeping its permissions."""
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# movie-director-health configuration (docs/configuration.md)\n")
    new = plan_write(text, chosen)
    if new == text:
        return "unchanged"
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return "written"


def lines_to_add(chosen: dict[str, dict]) -> str:
    return "\n".join(f"[{table}]\nurl = {_toml_string(f['url'])}\n" for table, f in chosen.items())


# -- the command -------------------------------------------------------------------------
def _describe(f: dict) -> str:
    name = NAMES.get(f["kind"], f["kind"])
    if f["kind"] == "gradio":
        who = NAMES[f["service"]] if f["service"] else "a Gradio app"
        what = (f"{who} ({f['title']}, Gradio {f['version']})" if f["service"]
                else f"{f['title']} (Gradio {f['version']})")
    elif f["kind"] == "unknown":
        return f"  {f['url']}: {f['detail']}"
    else:
        what = name + (f" {f['version']}" if f.get("version") else "")
    table = table_of(f)
    where = f" -> [{table}]" if table else (
        "; not one of Wan2GP, RVC WebUI, AudioLDM: add it as [services.<name>] with flavour = \"gradio\""
        if f["kind"] == "gradio" else
        f"; to watch it, set [services.rvc] flavour = \"rvc-python\" and url = \"{f['url']}\""
        if f["kind"] == "rvc-python" else "")
    detail = f": {f['detail']}" if f.get("detail") else ""
    return f"  {what} at {f['url']}{detail}{where}"


def _hosts(values: list[str] | None) -> list[str]:
    if not values:
        return ["127.0.0.1"]  # loopback only, unless the user names hosts
    out = []
    for h in values:
        h = h.strip().strip("[]")
        if not h or "/" in h or any(c.isspace() for c in h) or len(h) > 253:
            raise ValueError(f"--host {h!r}: name one host (a name or an address), not a range")
        try:
            ipaddress.ip_address(h)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.\-]+", h):
                raise ValueError(f"--host {h!r} is not a host name or address") from None
        out.append(h)
    if len(out) > MAX_HOSTS:
        raise ValueError(f"at most {MAX_HOSTS} hosts at a time")
    return out


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="md-health discover",
                                     description="Find the backends listening on this machine's usual ports.")
    parser.add_argument("--host", action="append", help="also or instead scan this host (repeatable); "
                        "default: 127.0.0.1 only")
    parser.add_argument("--port", action="append", type=int, help="scan this port instead of the usual ones "
                        "(repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request (default 1.5)")
    parser.add_argument("--write", action="store_true", help="save the found URLs to the config file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", help="the config file (default: MD_HEALTH_CONFIG or the usual place)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        hosts = _hosts(args.host)
        ports = list(dict.fromkeys(args.port or DEFAULT_PORTS))
        if not all(0 < p < 65536 for p in ports) or len(ports) > MAX_PORTS:
            raise ValueError(f"ports must be 1-65535, at most {MAX_PORTS} of them")
        if not 0 < args.timeout <= 30:
            raise ValueError("--timeout must be between 0 and 30 seconds")
    except ValueError as exc:
        print(f"md-health discover: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    found = scan(hosts, ports, args.timeout)
    took = time.monotonic() - started
    known = [f for f in found if f["kind"] != "unknown"]
    chosen = choose(known)
    written: str | None = None
    error: str | None = None
    outcome = ""
    if args.write and chosen:
        from bus.config import default_path

        path = Path(args.config) if args.config else default_path()
        try:
            outcome = write_config(path, chosen)
            written = str(path)
        except UnsafeEdit as exc:
            error = f"{path} was not changed: {exc}. Add these lines to it yourself:\n{lines_to_add(chosen)}"
        except OSError as exc:
            error = (f"cannot write {path} ({exc.__class__.__name__}: {exc}). Add these lines to it yourself:\n"
                     f"{lines_to_add(chosen)}")
    if args.json:
        print(json.dumps({"found": [{k: f.get(k) for k in ("kind", "service", "url", "title", "version", "detail")}
                                    for f in known],
                          "scanned": len(hosts) * len(ports), "written": written, "error": error},
                         allow_nan=False))
        return 1 if error else 0
    where = ", ".join(hosts)
    print(f"Checked {len(hosts) * len(ports)} ports on {where} in {took:.1f} s.")
    if known:
        print("Found:")
        for f in known:
            print(_describe(f))
        for table, f in chosen.items():
            also = [g["url"] for g in known if table_of(g) == table and g is not f]
            if also:
                print(f"  ({NAMES.get(table.split('.')[1], table)} also answers at {', '.join(also)}; "
                      f"the first is used for [{table}])")
    else:
        print("No known backend answers on these ports. Start one, or name its port with --port.")
    for f in found:
        if f["kind"] == "unknown":
            print(_describe(f))
    if error:
        print(error, file=sys.stderr)
        return 1
    if written:
        print(f"{'Saved to' if outcome == 'written' else 'Already in'} {written}: "
              + ", ".join(f"[{t}] url" for t in chosen))
    elif chosen and not args.write:
        print("Run `md-health discover --write` to save these URLs to the config file.")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
