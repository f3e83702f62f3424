"""Config fuzzing: bad types, unknown keys, malformed URLs and broken TOML.

Starting from a valid config that sets every key of every section, hypothesis replaces
one value (or adds an unknown key or section, or mangles the text). The checker of that
key is the oracle: if it refuses the value, loading must raise ConfigError naming
`section.key`; whatever happens, nothing but ConfigError may come out (no traceback).
Then the real CLIs are run on bad configs: exit code 2, the key named, no traceback.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

from aggregator.settings import AGGREGATOR_KEYS, ALERT_KEYS, PRICE_KEYS, from_config
from bus.config import BUS_KEYS, LLM_KEYS, LLM_PROVIDER_KEYS, SERVICE_KEYS, ConfigError, load
from tests.conftest import ROOT
from tests.reliability import measured  # noqa: F401 - fixture

BASE: dict[str, dict] = {
    "bus": {"events": "tcp://127.0.0.1:5581", "snapshots": "tcp://127.0.0.1:5582", "requests": "tcp://127.0.0.1:5583"},
    "services.comfyui": {"url": "http://127.0.0.1:8188", "enabled": True, "required": True, "interval": 2.0,
                         "timeout": 2.0, "flavour": "comfyui", "failures_to_down": 2, "websocket": True},
    "services.wan2gp": {"url": "http://127.0.0.1:7860", "enabled": False, "expect_title": "Wan2GP"},
    "llm": {"active_model": "gpt-4o", "active_provider": "openai", "autodetect": False},
    "llm.openai": {"enabled": True, "url": "http://127.0.0.1:9/v1"},
    "llm.azure": {"url": "http://127.0.0.1:9", "api_version": "2024-10-21", "enabled": False},
    "aggregator": {"tiers": ["1s:5m", "10s:1h", "1m:24h"], "flush_interval": 5.0, "metrics_port": 9464,
                   "persist": True, "data_dir": "/tmp/md-health-never-used"},
    "alerts.default": {"raise_after_s": 30.0, "clear_after_s": 30.0, "p95_ms": 2000.0, "p95_clear_ms": 1500.0,
                       "success_pct": 90.0, "success_clear_pct": 95.0, "queue": 10.0, "queue_clear": 5.0,
                       "down_s": 60.0, "key_invalid": True, "enabled": True},
    'prices."gpt-4o"': {"input": 2.5, "output": 10.0},
}


def checker(section: str, key: str):
    kind, _, _ = section.partition(".")
    table = {"bus": BUS_KEYS, "services": SERVICE_KEYS, "aggregator": AGGREGATOR_KEYS, "alerts": ALERT_KEYS,
             "prices": PRICE_KEYS}.get(kind)
    if kind == "llm":
        table = LLM_PROVIDER_KEYS if "." in section else LLM_KEYS
    return table[key]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def render(doc: dict[str, dict]) -> str:
    out = []
    for section, table in doc.items():
        out.append(f"[{section}]")
        out += [f"{json.dumps(k) if not k.isidentifier() else k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), max_size=24)
bad_urls = st.sampled_from(["http//127.0.0.1:8188", "ftp://127.0.0.1", "http://", "http://:8188", "127.0.0.1:8188",
                            "http://127.0.0.1:99999", "http://127.0.0.1:port", "http://[::1", "javascript:alert(1)",
                            "tcp://*:5581", "tcp://127.0.0.1", "ipc://", "1s:5x", "10s", "5m:1s"])
values = st.recursive(
    st.booleans() | st.integers(-10, 10**12) | st.floats() | text | bad_urls,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5), inner,
                                                                max_size=2),
    max_leaves=4,
)


def load_all(path):
    cfg = load(path)
    from_config(cfg)
    return cfg


STATS = {"examples": 0, "rejected": 0, "accepted": 0}


@settings(max_examples=700, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def _fuzz(tmp, data):
    doc = {s: dict(t) for s, t in BASE.items()}
    action = data.draw(st.sampled_from(["value", "value", "value", "unknown_key", "unknown_section", "mangle"]))
    path = tmp / "fuzz.toml"
    expect_key = None
    if action == "value":
        section = data.draw(st.sampled_from(sorted(doc)))
        key = data.draw(st.sampled_from(sorted(doc[section])))
        value = data.draw(values)
        doc[section][key] = value
        try:
            checker(section, key)(value)
        except ValueError:
            expect_key = f"{section.replace(chr(34), '')}.{key}"
        # Any other exception from a checker is itself a bug: it would surface as a traceback.
    elif action == "unknown_key":
        section = data.draw(st.sampled_from(sorted(doc)))
        key = data.draw(st.from_regex(r"[a-z_]{3,12}", fullmatch=True).filter(lambda k: k not in doc[section]))
        try:
            checker(section, key)
        except KeyError:
            expect_key = f"{section.replace(chr(34), '')}.{key}"
        doc[section][key] = data.draw(values)
    elif action == "unknown_section":
        name = data.draw(st.from_regex(r"[a-z]{3,10}", fullmatch=True).filter(
            lambda n: n not in ("bus", "services", "llm", "aggregator", "alerts", "prices")))
        doc[name] = {"x": 1}
        expect_key = name
    body = render(doc)
    if action == "mangle":
        i = data.draw(st.integers(0, len(body)))
        body = body[:i] + data.draw(st.sampled_from(["[", "]", "=", '"', "\n[[x]]\n", "= =", "\x00", "{", "'''"])) \
            + body[i + data.draw(st.integers(0, 3)):]
    path.write_text(body, encoding="utf-8")
    STATS["examples"] += 1
    try:
        load_all(path)
        STATS["accepted"] += 1
        assert expect_key is None, f"accepted a bad {expect_key}:\n{body}"
    except ConfigError as exc:
        STATS["rejected"] += 1
        message = str(exc)
        assert "Traceback" not in message and len(message) < 600
        if expect_key is not None:
            assert expect_key in message, (expect_key, message)


def test_config_fuzz(tmp_path, measured):
    base = tmp_path / "base.toml"
    base.write_text(render(BASE))
    load_all(base)  # the starting point is valid
    _fuzz(tmp_path)
    assert STATS["examples"] >= 500 and STATS["rejected"] > 100 and STATS["accepted"] >= 1, STATS
    measured.record("config_fuzz", section="Bad input", order=60,
                    case="Config fuzzing (hypothesis: bad types, unknown keys/sections, malformed URLs and "
                         "endpoints, broken TOML)",
                    required="a clear error naming the key, never a traceback",
                    measured=f"{STATS['examples']} configs: {STATS['rejected']} refused with a ConfigError naming the "
                             f"key (checked against each key's own checker), {STATS['accepted']} valid ones accepted, "
                             "0 other exceptions; the CLIs exit 2 with the key named (below)", **STATS)


def test_clis_report_bad_config_without_traceback(tmp_path):
    cases = {
        'services.comfyui.url': '[services.comfyui]\nurl = "http//127.0.0.1:8188"\n',
        'services.comfyui.interval': '[services.comfyui]\ninterval = "often"\n',
        'aggregator.flush_interval': '[aggregator]\nflush_interval = 60\n',
        'bus.colour': '[bus]\ncolour = "red"\n',
        'line 2': '[services.comfyui]\nurl = \n',
    }
    for key, body in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(body)
        for cmd in (["-m", "aggregator", "--config", str(path), "run"],
                    ["-m", "probes", "--config", str(path), "run-all"]):
            if key.startswith("aggregator") and "probes" in cmd:
                continue  # [aggregator] belongs to the aggregator; the probes do not read it
            out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 2, (cmd, key, out.stdout, out.stderr)
            assert key in out.stderr and "Traceback" not in out.stderr, (key, out.stderr)
