"""The fakes run from the command line as the README shows (`python -m tests.fakes.all`),
and what `--print-env` prints points the llm probe at the cloud fakes."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from probes.llm import LLMProbe
from tests.conftest import ROOT, wait_for
from tests.fakes.all import environment
from tests.fakes.base import free_port
from tests.fakes.llm import FakeAnthropic, FakeAzureOpenAI, FakeOpenAI


def test_fakes_all_from_the_command_line(procs):
    offset = free_port() - 8188  # comfyui lands on a port that was just free
    proc = procs.start("-m", "tests.fakes.all", "--port-offset", str(offset), "--only", "comfyui", name="fakes")
    url = f"http://127.0.0.1:{8188 + offset}/system_stats"

    def answered():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.load(resp)
        except OSError:
            return None
    stats = wait_for(answered, timeout=30, every=0.2)
    assert stats["system"]["comfyui_version"]
    assert proc.poll() is None
    printed = subprocess.run([sys.executable, "-m", "tests.fakes.all", "--print-env", "--port-offset", str(offset)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert f"MD_HEALTH_COMFYUI_URL=http://127.0.0.1:{8188 + offset}" in printed
    assert "OPENAI_BASE_URL=" in printed and "ANTHROPIC_API_KEY=" in printed


def test_print_env_points_the_llm_probe_at_the_cloud_fakes(monkeypatch):
    for key in ("OLLAMA_HOST", "MD_HEALTH_LMSTUDIO_URL", "MD_HEALTH_LLAMACPP_URL", "AZURE_API_KEY"):
        monkeypatch.delenv(key, raising=False)  # nothing from the developer's own setup
    with FakeOpenAI() as o, FakeAnthropic() as a, FakeAzureOpenAI() as z:
        env = environment()
        env["OPENAI_BASE_URL"] = o.url + "/v1"
        env["ANTHROPIC_BASE_URL"] = a.url
        env["AZURE_OPENAI_ENDPOINT"] = z.url
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        r = LLMProbe("llm", {"timeout": 3.0, "llm": {"autodetect": False}}).check()
    assert r.healthy and sorted(r.capabilities) == ["anthropic", "azure", "openai"]
