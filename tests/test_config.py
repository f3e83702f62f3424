"""Config: defaults for every service, environment overrides, [llm], and bad config that
gets a clear error naming the key and the line, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bus.config import DEFAULT_SERVICES, FLAVOURS, ConfigError, load
from probes.registry import PROBES, make_probe
from tests.conftest import ROOT


def test_defaults_for_every_service():
    cfg = load(text="")
    s = cfg.services
    assert (s["comfyui"]["url"], s["comfyui"]["required"]) == ("http://127.0.0.1:8188", True)
    assert s["wan2gp"]["url"] == "http://127.0.0.1:7860" and s["wan2gp"]["flavour"] == "wan2gp"
    assert s["rvc"]["url"] == "http://127.0.0.1:7865" and s["rvc"]["flavour"] == "webui"
    assert s["audioldm"]["url"] == "http://127.0.0.1:7863"
    assert s["llm"]["flavour"] == "llm" and s["llm"]["interval"] == 60.0
    for name, values in s.items():
        assert values["enabled"] is True and values["failures_to_down"] == 2, name
        assert not values["required"] or name == "comfyui"
        make_probe(name, {**values, "llm": {}})  # every default has a probe


def test_every_flavour_has_a_probe():
    assert set(FLAVOURS) == set(PROBES)


def test_overrides_from_file_and_environment(monkeypatch):
    text = ('[services.rvc]\nflavour = "rvc-python"\n\n[services.wan2gp]\nurl = "http://gpu-box:7860/"\n'
            'interval = 5\nfailures_to_down = 3\nexpect_title = "WanGP"\n\n'
            '[services.sdnext]\nflavour = "gradio"\nurl = "http://127.0.0.1:7861"\n')
    cfg = load(text=text)
    assert cfg.services["rvc"]["url"] == "http://127.0.0.1:5050"  # rvc-python's own port
    assert cfg.services["wan2gp"]["url"] == "http://gpu-box:7860" and cfg.services["wan2gp"]["interval"] == 5.0
    assert cfg.services["sdnext"]["required"] is False and cfg.services["sdnext"]["flavour"] == "gradio"
    monkeypatch.setenv("MD_HEALTH_WAN2GP_URL", "http://127.0.0.1:7999")
    assert load(text=text).services["wan2gp"]["url"] == "http://127.0.0.1:7999"
    monkeypatch.setenv("MD_HEALTH_WAN2GP_URL", "not a url")
    with pytest.raises(ConfigError, match="MD_HEALTH_WAN2GP_URL must be an http"):
        load(text=text)


def test_llm_section_is_validated():
    cfg = load(text='[llm]\nactive_model = "gpt-4o"\nautodetect = false\n\n[llm.openai]\napi_key = "sk-x"\n'
                    '\n[llm.azure]\nurl = "https://myres.openai.azure.com"\napi_version = "2024-10-21"\n')
    llm = cfg.sections["llm"]
    assert llm["active_model"] == "gpt-4o" and llm["openai"]["api_key"] == "sk-x"
    assert llm["azure"]["url"] == "https://myres.openai.azure.com"


BAD = [
    ('[services.comfyui]\nurl = "localhost:8188"\n', "line 2: services.comfyui.url must be an http:// or https:// URL"),
    ('[services.comfyui]\nurl = "http://127.0.0.1:99999"\n', "line 2: services.comfyui.url has a bad port"),
    ('[services.comfyui]\n\ninterval = "fast"\n', "line 3: services.comfyui.interval must be a number greater than 0"),
    ('[services.comfyui]\nrequired = "yes"\n', "line 2: services.comfyui.required must be true or false"),
    ('[services.comfyui]\nfailures_to_down = 0\n', "line 2: services.comfyui.failures_to_down must be a whole number"),
    ('[services.comfyui]\nintervall = 3\n', "line 2: services.comfyui.intervall is not a known key"),
    ('[services.rvc]\nflavour = "rvcpython"\n', "line 2: services.rvc.flavour is 'rvcpython', which no probe serves"),
    ('# my services\n[services.foo]\nurl = "http://127.0.0.1:1"\n', "line 2: services.foo has flavour 'foo'"),
    ('[services.bar]\nflavour = "gradio"\n', "line 1: services.bar needs a url"),
    ('[servics.comfyui]\nurl = "http://x:1"\n', "line 1: servics is not a known section"),
    ('[llm.openia]\napi_key = "k"\n', "line 1: llm.openia is not a known provider"),
    ('[llm]\nactive_provider = "gpt"\n', "line 2: llm.active_provider must be one of openai"),
    ('[llm.openai]\napi_key = ""\n', "line 2: llm.openai.api_key must not be empty"),
    ('[llm.ollama]\nurl = "ftp://x"\n', "line 2: llm.ollama.url must be an http"),
    ('[services.comfyui\nurl = 1\n', "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_config_names_key_and_line(text, message, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_config_through_the_command_line_is_not_a_traceback(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[services.comfyui]\ntimeout = -1\n')
    env = {**os.environ, "MD_HEALTH_CONFIG": str(path)}
    for args in (["run", "comfyui"], ["run-all"]):
        p = subprocess.run([sys.executable, "-m", "probes", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2
        assert "line 2: services.comfyui.timeout must be a number greater than 0" in p.stderr
        assert "Traceback" not in p.stderr + p.stdout
    p = subprocess.run([sys.executable, "-m", "probes", "run", "comfyui", "--url", "htp//x"], cwd=ROOT,
                       env={**os.environ, "MD_HEALTH_CONFIG": str(tmp_path / "none.toml")}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "--url must be an http" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_key_in_a_world_readable_file_is_warned_about(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[llm.anthropic]\napi_key = "sk-ant-secret"\n')
    path.chmod(0o644)
    cfg = load(path)
    assert any("chmod 600" in w for w in cfg.warnings)
    assert all("sk-ant-secret" not in w for w in cfg.warnings)
    path.chmod(0o600)
    assert load(path).warnings == []


def test_a_service_name_that_cannot_be_a_topic_is_refused_with_its_line():
    from bus.config import ConfigError, load
    text = '[services."comfy ui"]\nurl = "http://127.0.0.1:8188"\n'
    try:
        load(text=text)
    except ConfigError as exc:
        assert "comfy ui" in str(exc) and "service name" in str(exc)
    else:
        raise AssertionError("a service name with a space was accepted")


def test_endpoint_check_accepts_every_loopback_form_and_refuses_malformed_ones():
    """The same forms bus.security.is_loopback accepts, IPv6 in brackets included."""
    for endpoint in ("tcp://[::1]:5581", "tcp://127.0.0.1:5581", "tcp://localhost:5581", "ipc:///tmp/md.sock",
                     "inproc://bus"):
        assert load(text=f'[bus]\nevents = "{endpoint}"\n').endpoints.events == endpoint
    for endpoint in ("tcp://[]:5581", "tcp://[::1:5581", "tcp://::1:5581", "tcp://host", "tcp://a b:1",
                     "http://127.0.0.1:5581"):
        with pytest.raises(ConfigError, match="bus.events must look like"):
            load(text=f'[bus]\nevents = "{endpoint}"\n')


def test_an_ipv6_loopback_endpoint_from_the_config_carries_messages(tmp_path):
    """Accepted is not enough: the endpoint the config gives must work on a real socket."""
    import time

    from bus.sockets import close, new_context, pub_socket, sub_socket
    from tests.fakes.base import free_port

    cfg = load(text=f'[bus]\nevents = "tcp://[::1]:{free_port()}"\n')
    ctx = new_context()
    sub = sub_socket(ctx, cfg.endpoints.events, bind=True)
    pub = pub_socket(ctx, cfg.endpoints.events)
    try:
        deadline = time.monotonic() + 20
        got = None
        while got is None and time.monotonic() < deadline:
            pub.send(b"hello")  # PUB drops until the connection is up: resend until one arrives
            if sub.poll(100):
                got = sub.recv()
        assert got == b"hello"
    finally:
        close(pub, sub)
        ctx.term()

