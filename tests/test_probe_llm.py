"""The llm probe against loopback fakes of OpenAI, Anthropic, Azure, Ollama, LM Studio and
llama.cpp serving the real bodies, and key redaction checked with a planted key in the
bus frames, the probe's log output and its error text. The "alive but not ready" states
(llama.cpp loading and sleeping, its router's model states, Ollama and LM Studio models not
loaded) and Anthropic's spend limit and overload are driven by the fakes, one of them through a
real probe process."""
from __future__ import annotations

import os
import sys

import pytest

from probes.llm import LLAMACPP_PORTS, LLMProbe, redact, resolve
from tests.fakes.llm import (FAKE_KEY, FakeAnthropic, FakeAzureOpenAI, FakeLlamaCpp, FakeLMStudio, FakeOllama,
                             FakeOpenAI)
from tests.fakes.base import free_port
from tests.fakes.tap import BusTap

LLM_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AZURE_OPENAI_API_KEY",
           "AZURE_API_KEY", "AZURE_OPENAI_ENDPOINT", "OLLAMA_HOST", "MD_HEALTH_LMSTUDIO_URL", "MD_HEALTH_LLAMACPP_URL")
PLANTED = "sk-proj-PLANTEDxKEYx9f8e7d6c5b4a3"


@pytest.fixture(autouse=True)
def no_real_keys(monkeypatch):
    """Never let a developer's real keys (or Ollama) take part in a test."""
    for key in LLM_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def fakes():
    started = {name: cls().start() for name, cls in (("openai", FakeOpenAI), ("anthropic", FakeAnthropic),
                                                     ("azure", FakeAzureOpenAI), ("ollama", FakeOllama),
                                                     ("lmstudio", FakeLMStudio), ("llamacpp", FakeLlamaCpp))}
    yield started
    for f in started.values():
        f.stop()


def cloud_env(monkeypatch, fakes, key=FAKE_KEY):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_BASE_URL", fakes["openai"].url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fakes["anthropic"].url)
    monkeypatch.setenv("AZURE_API_KEY", key)  # the seed story's name; AZURE_OPENAI_API_KEY works too
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fakes["azure"].url)


def local_section(fakes, **extra):
    return {"autodetect": False, "ollama": {"url": fakes["ollama"].url},
            "lmstudio": {"url": fakes["lmstudio"].url + "/v1"}, "llamacpp": {"url": fakes["llamacpp"].url}, **extra}


def probe(section, **kw):
    return LLMProbe("llm", {"url": "", "timeout": 3.0, "interval": 60.0, "llm": section, **kw})


def test_every_provider_valid_with_models(monkeypatch, fakes):
    cloud_env(monkeypatch, fakes)
    r = probe(local_section(fakes, active_model="claude-opus-4-1-20250805")).check()
    assert r.healthy, r.error
    p = r.details["providers"]
    assert {n: v["state"] for n, v in p.items()} == dict.fromkeys(p, "valid")
    assert p["openai"]["models"] == FakeOpenAI.models and p["openai"]["model_count"] == 3
    # Three Anthropic models over pages of two: the probe followed has_more / last_id.
    assert p["anthropic"]["models"] == FakeAnthropic.models and fakes["anthropic"].hits["/v1/models"] == 2
    assert p["azure"]["model_count"] == 2
    assert p["ollama"]["models"] == ["llama3.2:latest", "qwen2.5:7b"] and p["ollama"]["version"] == "0.12.3"
    assert p["ollama"]["vram_used_bytes"] == 2_019_393_189
    assert p["ollama"]["loaded"][0]["context_length"] == 4096 and p["ollama"]["cloud_disabled"] is False
    assert p["lmstudio"]["api"] == "v1" and p["lmstudio"]["loaded"][0]["context_length"] == 4096
    assert r.readiness == "" and "readiness_reason" not in r.details
    assert r.details["resources"]["vram_used_bytes"] == 2_019_393_189
    assert p["lmstudio"]["model_count"] == 2 and p["llamacpp"]["model_count"] == 1
    assert r.details["active_model"] == "claude-opus-4-1-20250805"
    assert r.details["active_provider"] == "anthropic" and r.details["active_model_available"] is True
    assert sorted(r.capabilities) == sorted(p)
    assert {t.endpoint for t in r.timings} >= {"openai /models", "anthropic /v1/models", "azure /openai/models",
                                               "ollama /api/tags", "ollama /api/ps", "ollama /api/status",
                                               "lmstudio /api/v1/models", "llamacpp /health", "llamacpp /props"}


def test_nothing_configured_is_an_error_that_says_what_to_set():
    r = probe({"autodetect": False}).check()
    assert not r.healthy and r.reachable and r.error_kind == "not_configured"
    assert "OPENAI_API_KEY" in r.error
    assert all(v["state"] == "not_configured" and not v["configured"] for v in r.details["providers"].values())


def test_invalid_rate_limited_and_unreachable(monkeypatch, fakes):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-123456")
    monkeypatch.setenv("OPENAI_BASE_URL", fakes["openai"].url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fakes["anthropic"].url)
    fakes["anthropic"].limited = True
    fakes["ollama"].stop()
    pr = probe({"autodetect": False, "ollama": {"url": fakes["ollama"].url}})
    r = pr.check()
    p = r.details["providers"]
    assert p["openai"]["state"] == "invalid" and "HTTP 401, invalid_api_key" in p["openai"]["error"]
    assert "OPENAI_API_KEY" in p["openai"]["error"]
    assert p["anthropic"]["state"] == "rate_limited" and p["anthropic"]["retry_after"] == 7.0
    assert p["ollama"]["state"] == "unreachable" and "ollama serve" in p["ollama"]["error"]
    assert p["azure"]["state"] == "not_configured"
    assert not r.healthy and r.reachable and r.error_kind == "auth"
    assert "sk-wrong-key-123456" not in repr(r.details) + r.error
    # While rate limited, the probe leaves Anthropic alone until retry-after has passed.
    hits = fakes["anthropic"].hits["/v1/models"]
    again = pr.check().details["providers"]["anthropic"]
    assert again["state"] == "rate_limited" and fakes["anthropic"].hits["/v1/models"] == hits
    assert 0 < again["retry_after"] <= 7.0


def test_llamacpp_loading_then_ready_and_azure_without_endpoint(monkeypatch, fakes):
    fakes["llamacpp"].loading = True
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    pr = probe({"autodetect": False, "llamacpp": {"url": fakes["llamacpp"].url}})
    r = pr.check()
    p = r.details["providers"]
    # /health 503 {"error": {"message": "Loading model"}}: alive, not ready (never down).
    assert p["llamacpp"]["state"] == "loading" and "Loading model" in p["llamacpp"]["readiness_reason"]
    assert r.healthy and r.readiness == "loading" and "Loading model" in r.details["readiness_reason"]
    assert p["azure"]["state"] == "not_configured" and "AZURE_OPENAI_ENDPOINT" in p["azure"]["error"]
    fakes["llamacpp"].loading = False
    r = pr.check()
    assert r.healthy and r.readiness == "" and r.details["providers"]["llamacpp"]["state"] == "valid"
    assert r.details["providers"]["llamacpp"]["model_count"] == 1


def llamacpp_probe(fakes, **extra):
    return probe({"autodetect": False, "llamacpp": {"url": fakes["llamacpp"].url}, **extra})


def test_llamacpp_sleeping_single_model_is_read_without_waking_it(fakes):
    fakes["llamacpp"].sleeping = True
    r = llamacpp_probe(fakes).check()
    assert r.healthy and r.readiness == "sleeping"
    assert r.details["providers"]["llamacpp"]["state"] == "sleeping"
    assert "sleep-idle-seconds" in r.details["readiness_reason"]
    assert {path for path, _ in fakes["llamacpp"].queries} == {"/health", "/props", "/models"}
    assert all("model" not in q for _, q in fakes["llamacpp"].queries)


@pytest.mark.parametrize("status, readiness", [("loaded", ""), ("loading", "loading"), ("downloading", "loading"),
                                               ("sleeping", "sleeping"), ("unloaded", "sleeping")])
def test_llamacpp_router_model_states(fakes, status, readiness):
    fake = fakes["llamacpp"]
    fake.router = {"qwen3-8b": "loaded", "gemma-3-12b": status}
    r = llamacpp_probe(fakes, active_model="gemma-3-12b").check()
    p = r.details["providers"]["llamacpp"]
    assert r.healthy and r.readiness == readiness, r.details
    assert p["mode"] == "router" and p["models"] == ["qwen3-8b", "gemma-3-12b"]
    assert {"id": "gemma-3-12b", "status": status} in p["model_states"]
    assert r.details["active_provider"] == "llamacpp" and r.details["active_model_available"] is True
    # Nothing the probe asked named a model, so the router loaded nothing: the state is as it was.
    assert fake.router["gemma-3-12b"] == status and all("model" not in q for _, q in fake.queries)


def test_llamacpp_router_without_active_model_and_a_failed_one(fakes):
    fake = fakes["llamacpp"]
    fake.router = {"a": "unloaded", "b": "sleeping"}
    assert llamacpp_probe(fakes).check().readiness == "sleeping"
    fake.router = {"a": "unloaded", "b": "loading"}
    assert llamacpp_probe(fakes).check().readiness == "loading"
    fake.router = {"a": "unloaded", "b": "loaded"}
    assert llamacpp_probe(fakes).check().readiness == ""
    fake.router, fake.failed = {"a": "unloaded"}, {"a": 1}
    r = llamacpp_probe(fakes, active_model="a").check()
    assert not r.healthy and r.reachable and r.error_kind == "model_failed"
    assert r.details["providers"]["llamacpp"]["state"] == "failed" and "exit code 1" in r.error


def test_llamacpp_tries_both_default_ports(fakes):
    assert resolve({}, env={})["llamacpp"].candidates == LLAMACPP_PORTS == ("http://127.0.0.1:8080",
                                                                              "http://127.0.0.1:9931")
    assert resolve({"llamacpp": {"url": "http://127.0.0.1:7000"}}, env={})["llamacpp"].candidates == ()
    assert resolve({}, env={"MD_HEALTH_LLAMACPP_URL": "http://127.0.0.1:7000"})["llamacpp"].candidates == ()
    closed = f"http://127.0.0.1:{free_port()}"
    pr = probe({"llamacpp": {"enabled": True}})
    pr.providers["llamacpp"].candidates = (closed, fakes["llamacpp"].url)  # the old port empty, the new one up
    r = pr.check()
    p = r.details["providers"]["llamacpp"]
    assert p["state"] == "valid" and p["url"] == fakes["llamacpp"].url
    fakes["llamacpp"].stop()
    p = pr.check().details["providers"]["llamacpp"]
    assert p["state"] == "unreachable" and "nothing answers on port" in p["error"]


def test_lmstudio_v1_loaded_instances_and_older_fallback(fakes):
    fake = fakes["lmstudio"]
    section = {"autodetect": False, "lmstudio": {"url": fake.url + "/v1"}, "active_model": "qwen2.5-7b-instruct"}
    r = probe(section).check()
    p = r.details["providers"]["lmstudio"]
    assert r.healthy and r.readiness == "" and p["state"] == "valid" and p["api"] == "v1"
    assert p["models"] == FakeLMStudio.models and fake.hits["/api/v1/models"] == 1 and "/v1/models" not in fake.hits
    fake.loaded = set()  # unloaded by its idle TTL: LM Studio loads it again on the next request
    r = probe(section).check()
    assert r.healthy and r.readiness == "sleeping" and r.details["providers"]["lmstudio"]["state"] == "sleeping"
    assert "qwen2.5-7b-instruct is not loaded" in r.details["readiness_reason"]
    fake.native = False  # before 0.4: no /api/v1, the OpenAI-compatible list, which says nothing of loading
    r = probe(section).check()
    p = r.details["providers"]["lmstudio"]
    assert r.healthy and r.readiness == "" and p["api"] == "openai" and p["model_count"] == 2


def test_ollama_model_not_in_ps_is_sleeping(fakes):
    fake = fakes["ollama"]
    section = {"autodetect": False, "ollama": {"url": fake.url}}
    r = probe({**section, "active_model": "llama3.2"}).check()  # Ollama's implied :latest
    assert r.healthy and r.readiness == "" and r.details["active_model_available"] is True
    r = probe({**section, "active_model": "qwen2.5:7b"}).check()
    p = r.details["providers"]["ollama"]
    assert r.healthy and r.readiness == "sleeping" and p["state"] == "sleeping"
    assert "loads it on the first request" in p["readiness_reason"]
    fake.loaded, fake.has_status = {}, False  # nothing loaded, and an Ollama without /api/status
    r = probe(section).check()
    p = r.details["providers"]["ollama"]
    assert r.readiness == "sleeping" and p["vram_used_bytes"] == 0 and "cloud_disabled" not in p


def test_readiness_is_the_active_providers(monkeypatch, fakes):
    cloud_env(monkeypatch, fakes)
    fakes["ollama"].loaded = {}
    fakes["llamacpp"].loading = True
    # No active model: OpenAI is ready, so the service is.
    assert probe(local_section(fakes)).check().readiness == ""
    # The add-on's model is Ollama's, and Ollama has it unloaded: sleeping, whatever OpenAI says.
    assert probe(local_section(fakes, active_model="qwen2.5:7b")).check().readiness == "sleeping"
    assert probe(local_section(fakes, active_provider="llamacpp")).check().readiness == "loading"
    assert probe(local_section(fakes, active_model="gpt-4o")).check().readiness == ""


def test_anthropic_spend_limit_and_overload(monkeypatch, fakes):
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fakes["anthropic"].url)
    fakes["anthropic"].spend_limited = True
    pr = probe({"autodetect": False})
    r = pr.check()
    p = r.details["providers"]["anthropic"]
    assert p["state"] == "spend_limit" and p["retry_after"] is None
    assert "spend limit reached" in p["error"] and "rate limit" not in p["error"]
    assert "waiting will not help" in p["error"]
    assert not r.healthy and r.reachable and r.error_kind == "spend_limit"
    assert [t.error_kind for t in r.timings] == ["spend_limit"]
    # Not held back as a rate limit would be: the next check asks again.
    hits = fakes["anthropic"].hits["/v1/models"]
    pr.check()
    assert fakes["anthropic"].hits["/v1/models"] == hits + 1
    fakes["anthropic"].spend_limited, fakes["anthropic"].overloaded = False, True
    r = pr.check()
    p = r.details["providers"]["anthropic"]
    assert p["state"] == "overloaded" and "the provider's state, not your key's" in p["error"]
    assert r.error_kind == "provider_overloaded" and r.reachable and not r.healthy
    assert "HTTP 529, overloaded_error" in r.error


def test_llamacpp_loading_through_the_probe_process(endpoints, procs, tmp_path):
    """The real probe process publishes `loading` while llama.cpp loads, then `connected`."""
    with FakeLlamaCpp() as fake:
        fake.loading = True
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'[llm]\nautodetect = false\n\n[llm.llamacpp]\nurl = "{fake.url}"\n')
        tap = BusTap(endpoints)
        try:
            procs.probe("llm", "--interval", "0.3", env={"MD_HEALTH_CONFIG": str(cfg)})
            st = tap.wait_state("loading", "llm", timeout=30)
            assert st["details"]["providers"]["llamacpp"]["state"] == "loading" and st["error"] == ""
            fake.loading = False
            st = tap.wait_state("connected", "llm", timeout=30)
            assert st["details"]["providers"]["llamacpp"]["state"] == "valid"
        finally:
            tap.close()


def test_autodetect_finds_local_servers_and_ignores_absent_ones(monkeypatch, fakes):
    monkeypatch.setenv("OLLAMA_HOST", fakes["ollama"].url.replace("http://", ""))  # "host:port" form
    fakes["lmstudio"].stop()
    monkeypatch.setenv("MD_HEALTH_LMSTUDIO_URL", fakes["lmstudio"].url + "/v1")
    pr = probe({})
    pr.providers["llamacpp"].url = fakes["lmstudio"].url  # auto-detected at an address where nothing listens
    r = pr.check()
    p = r.details["providers"]
    assert r.healthy and p["ollama"]["state"] == "valid"
    assert p["lmstudio"]["state"] == "unreachable"  # named in the environment: its absence is news
    assert p["llamacpp"]["state"] == "not_configured"  # only auto-detected: absence is not a fault


def test_resolve_reads_env_over_config():
    section = {"openai": {"api_key": "sk-from-config-xyz", "url": "http://127.0.0.1:1/v1"}}
    ps = resolve(section, env={})
    assert ps["openai"].key == "sk-from-config-xyz" and ps["openai"].url == "http://127.0.0.1:1/v1"
    ps = resolve(section, env={"OPENAI_API_KEY": "sk-from-env-abc"})
    assert ps["openai"].key == "sk-from-env-abc"
    assert resolve({}, env={"OLLAMA_HOST": "0.0.0.0"})["ollama"].url == "http://127.0.0.1:11434"
    assert resolve({}, env={"OLLAMA_HOST": "http://gpu-box:9999"})["ollama"].url == "http://gpu-box:9999"
    assert resolve({}, env={"AZURE_OPENAI_API_KEY": "k1", "AZURE_API_KEY": "k2"})["azure"].key == "k1"
    assert redact("key sk-from-env-abc and sk-ant-api03-zzzzzzzz") == "key [redacted] and [redacted]"


def test_planted_key_never_leaves_the_probe(endpoints, procs, tmp_path, monkeypatch):
    """A real probe process with a planted key in the config file and in the environment,
    against fakes that reject it (and echo it back in their error bodies)."""
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic, FakeAzureOpenAI() as azure:
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'[llm]\nautodetect = false\nactive_model = "gpt-4o"\n\n'
                       f'[llm.openai]\nurl = "{openai.url}/v1"\napi_key = "{PLANTED}"\n')
        os.chmod(cfg, 0o644)
        tap = BusTap(endpoints)
        try:
            proc = procs.probe("llm", "--interval", "0.3", env={
                "MD_HEALTH_CONFIG": str(cfg), "ANTHROPIC_API_KEY": PLANTED, "ANTHROPIC_BASE_URL": anthropic.url,
                "AZURE_OPENAI_API_KEY": PLANTED, "AZURE_OPENAI_ENDPOINT": azure.url})
            st = tap.wait(lambda t: (s := t.last_status("llm")) and s["state"] == "error" and s, timeout=20)
            tap.pump(0.5)
        finally:
            tap.close()
        assert st["details"]["providers"]["openai"]["state"] == "invalid"
        assert st["details"]["providers"]["anthropic"]["state"] == "invalid"
        assert st["details"]["providers"]["azure"]["state"] == "invalid"
        assert "rejected the API key" in st["error"]
        assert openai.hits.get("/v1/models") and azure.hits.get("/openai/models")
        procs.stop_all()
        log = procs.output(proc)
    frames = b"".join(tap.frames)
    assert frames and PLANTED.encode() not in frames
    assert PLANTED[8:20].encode() not in frames  # not even a fragment
    assert PLANTED not in log and PLANTED[8:20] not in log
    assert PLANTED not in st["error"]
    if sys.platform != "win32":
        assert "other users can read it" in log and "chmod 600" in log
