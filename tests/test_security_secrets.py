"""Planted secrets: run the whole system with recognisable API keys and look for them everywhere.

The aggregator, the probe supervisor (ComfyUI + the LLM probe, one key valid and one
rejected, whose 401 echoes the key back), CLI status and exports (CSV and JSON, over the
bus and to files), the Prometheus endpoint, the SQLite history, every log, and every raw
frame on the bus (captured by a tap between the probes and the aggregator). The keys
must appear only where they were configured: the config file and the environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import zmq

from bus.client import MonitorClient
from bus.sockets import Endpoints, close, new_context
from tests.conftest import ROOT, wait_for
from tests.fakes.base import free_port
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.llm import FakeAnthropic, FakeOpenAI
from tests.reliability import measured  # noqa: F401 - fixture

# Recognisable, and shaped like real keys so shape-based redaction is exercised too.
OPENAI_KEY = "sk-proj-PLANTEDopenai7f3a9c1e5d2b4a6089e1"   # in the config file; the fake rejects it
ANTHROPIC_KEY = "sk-ant-PLANTEDanthropic0c4e8a2f6b1d3957"  # in the environment; the fake accepts it
NEEDLES = [k.encode() for k in (OPENAI_KEY, ANTHROPIC_KEY)] + [b"PLANTEDopenai", b"PLANTEDanthropic"]


class Tap(threading.Thread):
    """Sits between the probes and the aggregator: SUB bound where probes publish, PUB
    connected where the aggregator listens; keeps a copy of every raw frame."""

    def __init__(self, listen: str, forward: str) -> None:
        super().__init__(daemon=True)
        self.ctx = new_context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(b"")
        self.sub.bind(listen)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.connect(forward)
        self.frames: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sub.poll(100):
                frame = self.sub.recv()
                self.frames.append(frame)
                self.pub.send(frame)
        close(self.sub, self.pub)
        self.ctx.term()


def _hits(blob: bytes) -> list[bytes]:
    return [n for n in NEEDLES if n in blob]


def test_planted_keys_appear_only_where_configured(tmp_path, procs, monkeypatch, isolated_env, measured):
    aggregator_events = f"tcp://127.0.0.1:{free_port()}"
    ep = Endpoints.on_ports(free_port(), free_port(), free_port())  # ep.events is the tap
    for key, value in (("MD_HEALTH_EVENTS", ep.events), ("MD_HEALTH_SNAPSHOTS", ep.snapshots),
                       ("MD_HEALTH_REQUESTS", ep.requests), ("ANTHROPIC_API_KEY", ANTHROPIC_KEY)):
        monkeypatch.setenv(key, value)
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(var, raising=False)
    metrics_port = free_port()
    config = isolated_env / "config.toml"
    openai, anthropic = FakeOpenAI().start(), FakeAnthropic(valid_keys=(ANTHROPIC_KEY,)).start()
    comfy = FakeComfyUI().start()
    tap = Tap(ep.events, aggregator_events)
    tap.start()
    config.write_text(f"""
[services.comfyui]
url = "{comfy.url}"
interval = 0.5

[services.llm]
interval = 1.0

[services.wan2gp]
enabled = false

[services.rvc]
enabled = false

[services.audioldm]
enabled = false

[llm]
autodetect = false
active_model = "gpt-4o"

[llm.openai]
url = "{openai.url}/v1"
api_key = "{OPENAI_KEY}"

[llm.anthropic]
url = "{anthropic.url}"
""")
    config.chmod(0o644)  # readable by others, with a key in it: must warn
    outputs: dict[str, bytes] = {}
    client = None
    try:
        agg = procs.start("-m", "aggregator", "--events", aggregator_events, "run", "--metrics-port",
                          str(metrics_port), name="aggregator")
        sup = procs.start("-m", "probes", "run-all", name="supervisor")
        client = MonitorClient(ep, name="secrets")
        snoop_ctx = new_context()
        snoop = snoop_ctx.socket(zmq.SUB)
        snoop.linger, snoop.rcvhwm = 0, 0
        snoop.subscribe(b"")
        snoop.connect(ep.snapshots)

        def llm_done():
            providers = client.services.get("llm", {}).get("details", {}).get("providers", {})
            return (providers.get("openai", {}).get("state") == "invalid"
                    and providers.get("anthropic", {}).get("state") == "valid"
                    and client.services.get("comfyui", {}).get("state") == "connected")
        wait_for(llm_done, timeout=60, client=client)
        client.refresh()  # the refresh path too
        time.sleep(6.0)  # a flush of the history to disk (every 5 s), several LLM checks
        # Exports over the bus (what Blender's button does) ...
        for fmt in ("csv", "json"):
            rid = client.export(fmt, "1s", "10m")
            reply = wait_for(lambda: client.replies.get(rid), timeout=15, client=client)
            assert reply["ok"] and reply["rows"] > 0, reply
            outputs[f"bus export {fmt}"] = reply["content"].encode()
        # ... and from the CLI, plus status and the Prometheus endpoint.
        for name, args in (("status --json", ["status", "--json"]), ("status", ["status"]),
                           ("export csv file", ["export", "--format", "csv", "--tier", "1s", "--since", "10m",
                                                "-o", str(tmp_path / "export.csv")]),
                           ("export json file", ["export", "--format", "json", "--tier", "1s", "--since", "10m",
                                                 "-o", str(tmp_path / "export.json")])):
            out = subprocess.run([sys.executable, "-m", "aggregator", *args], capture_output=True, timeout=60,
                                 cwd=ROOT, env=os.environ.copy())
            assert out.returncode == 0, out.stderr
            outputs[f"md-health {name}"] = out.stdout + out.stderr
        outputs["/metrics"] = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
        while snoop.poll(0):
            outputs.setdefault("snapshot stream", b"")
            outputs["snapshot stream"] += snoop.recv() + b"\n"
        close(snoop)
        snoop_ctx.term()
        assert agg.poll() is None and sup.poll() is None
    finally:
        if client is not None:
            client.close()
        procs.stop_all()  # flushes and closes logs and the history file
        tap.stop.set()
        tap.join(5)
        for fake in (openai, anthropic, comfy):
            fake.stop()

    outputs["bus frames (probes → aggregator)"] = b"\n".join(tap.frames)
    for path in sorted(isolated_env.rglob("*")):  # logs, data dir (SQLite + WAL), export files
        if path.is_file() and path != config:
            outputs[str(path.relative_to(isolated_env))] = path.read_bytes()
    leaks = {where: _hits(blob) for where, blob in outputs.items() if _hits(blob)}
    assert not leaks, leaks
    # The search can find them: they are where they were configured, and they were used.
    assert _hits(config.read_bytes())
    assert len(tap.frames) > 50 and any(b"status.llm" in f for f in tap.frames)
    assert any(k == "ANTHROPIC_API_KEY" and v == ANTHROPIC_KEY for k, v in os.environ.items())
    log_text = b"".join(v for k, v in outputs.items() if k.endswith(".log")).decode("utf-8", "replace")
    assert "other users can read it" in log_text  # the permission warning
    searched = sum(len(v) for v in outputs.values())
    measured.record("secrets", section="Security", order=30,
                    case="Planted API keys (one in the config file and rejected with a 401 that echoes it, one "
                         "in the environment and valid)",
                    required="the key appears nowhere but where it was configured (bus, logs, exports, errors)",
                    measured=f"0 occurrences in {len(outputs)} places, {searched / 1e6:.1f} MB searched: "
                             f"{len(tap.frames):,} raw bus frames, the snapshot stream, bus and CLI exports (CSV, "
                             "JSON), `status`, /metrics, the SQLite history, every process log",
                    places=len(outputs), bytes_searched=searched, frames=len(tap.frames), where=sorted(outputs))
    measured.record("config_permissions", section="Security", order=35,
                    case="Config file holding a key, readable by other users (mode 644)",
                    required="a warning",
                    measured="the probes log: \"" + next(line for line in log_text.splitlines()
                                                          if "other users can read it" in line
                                                          ).split(" WARNING ")[-1].replace(str(config), "<config>")[:160]
                             + "\"")
