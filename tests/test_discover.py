"""Discovery (`md-health discover`, probes/discover.py): real Gradio apps and fakes of every
other backend on shuffled free ports are each found and named; closed ports cost nothing;
`--write` edits the config file so that bus/config.py loads it, keeping comments and every
other key, and refuses (printing the lines to add) where a line edit is not safe."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bus.config import load
from probes import discover
from tests.fakes.base import FakeBackend, free_port
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.gradio import FakeGradio
from tests.fakes.llm import FakeLlamaCpp, FakeLMStudio, FakeOllama
from tests.fakes.rvc_python import FakeRVCPython

ROOT = Path(__file__).resolve().parents[1]

# Two real Gradio apps (the installed gradio): Wan2GP's title, and AudioLDM's shape (no title,
# its name in the <h1> of a gr.HTML, an endpoint named text2audio).
REAL_APPS = {
    "wan2gp": textwrap.dedent("""
        import sys
        import gradio as gr
        with gr.Blocks(title="WanGP") as demo:
            box, out = gr.Textbox(), gr.Textbox()
            gr.Button("Generate").click(lambda p: p, box, out, api_name="generate_video")
        demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
    """),
    "audioldm": textwrap.dedent("""
        import sys
        import gradio as gr
        with gr.Blocks() as demo:
            gr.HTML("<div><h1>AudioLDM: Text-to-Audio Generation with Latent Diffusion Models</h1></div>")
            box, out = gr.Textbox(), gr.Textbox()
            gr.Button("Generate").click(lambda p: p, box, out, api_name="text2audio")
        demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
    """),
}


@pytest.fixture
def real_gradio_apps(tmp_path):
    pytest.importorskip("gradio")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*",
           "no_proxy": "*"}
    started = {}
    try:
        for name, source in REAL_APPS.items():
            script = tmp_path / f"{name}.py"
            script.write_text(source)
            port = free_port()
            log = open(tmp_path / f"{name}.log", "w")
            proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            started[name] = (port, proc, log)
        deadline = time.monotonic() + 120  # importing gradio on a loaded 2-core machine is slow
        for name, (port, proc, _) in started.items():
            while not discover._listening("127.0.0.1", port):
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"real gradio app {name} never listened"
                time.sleep(0.2)
        yield {name: port for name, (port, _, _) in started.items()}
    finally:
        for port, proc, log in started.values():
            proc.kill()
            proc.wait(timeout=20)
            log.close()


def test_scan_finds_each_backend_on_shuffled_ports(real_gradio_apps):
    router = FakeLlamaCpp()
    router.router = {"qwen3-8b": "loaded", "gemma-3-12b": "unloaded"}
    loading = FakeLlamaCpp()
    loading.loading = True
    old_lmstudio = FakeLMStudio()
    old_lmstudio.native = False
    hang = FakeBackend()
    hang.mode = "hang"
    login = FakeBackend()  # a Gradio 6 app launched with auth: /config is a stub without a version
    login.routes = {"/config": lambda fake, params: {"auth_required": True, "auth_message": None, "components": [],
                                                     "dependencies": [], "pages": [""], "current_page": ""}}
    fakes = {"comfyui": FakeComfyUI(), "rvc314": FakeGradio("rvc"), "audioldm350": FakeGradio("audioldm"),
             "other": FakeGradio("other"), "ollama": FakeOllama(), "llamacpp": FakeLlamaCpp(), "router": router,
             "loading": loading, "lmstudio": FakeLMStudio(), "old_lmstudio": old_lmstudio,
             "rvc_python": FakeRVCPython(), "hang": hang, "login": login}
    for f in fakes.values():
        f.start()
    try:
        ports = {name: f.port for name, f in fakes.items()}
        ports.update({f"real_{name}": port for name, port in real_gradio_apps.items()})
        ports["closed"] = free_port()
        order = list(ports.values())
        random.shuffle(order)
        found = {f["url"]: f for f in discover.scan(ports=order, timeout=10.0)}  # generous: a loaded machine
    finally:
        for f in fakes.values():
            f.stop()

    def at(name, suffix=""):
        return found[f"http://127.0.0.1:{ports[name]}{suffix}"]

    assert (at("comfyui")["kind"], at("comfyui")["service"]) == ("comfyui", "comfyui")
    assert at("comfyui")["version"] and at("comfyui")["detail"]
    real_wan = at("real_wan2gp")
    import gradio
    assert (real_wan["kind"], real_wan["service"], real_wan["title"]) == ("gradio", "wan2gp", "WanGP")
    assert real_wan["version"] == gradio.__version__ and "generate_video" in real_wan["detail"]
    real_ldm = at("real_audioldm")
    assert real_ldm["service"] == "audioldm" and real_ldm["title"].startswith("AudioLDM (untitled Gradio")
    assert at("rvc314")["service"] == "rvc" and at("rvc314")["version"].startswith("3.14")
    assert "14 named endpoints" in at("rvc314")["detail"]
    assert at("audioldm350")["service"] == "audioldm"
    assert at("other")["kind"] == "gradio" and at("other")["service"] is None
    assert at("other")["title"] == "Stable Diffusion"
    assert (at("ollama")["kind"], at("ollama")["service"]) == ("ollama", "llm")
    assert at("llamacpp")["kind"] == "llamacpp" and at("llamacpp")["version"] == "b7400-0c1b2d3"
    assert at("router")["detail"] == "router mode, 2 models"
    assert router.router["gemma-3-12b"] == "unloaded" and all("model" not in q for _, q in router.queries)
    assert at("loading")["kind"] == "llamacpp" and "loading" in at("loading")["detail"]
    assert at("lmstudio", "/v1")["kind"] == "lmstudio" and "1 loaded" in at("lmstudio", "/v1")["detail"]
    assert at("old_lmstudio", "/v1")["kind"] == "lmstudio"
    assert (at("rvc_python")["kind"], at("rvc_python")["service"]) == ("rvc-python", "rvc")
    assert at("hang")["kind"] == "unknown" and "no HTTP answer" in at("hang")["detail"]
    assert at("login")["kind"] == "unknown" and "login-protected Gradio app" in at("login")["detail"]
    assert f"http://127.0.0.1:{ports['closed']}" not in found
    # One finding per config table; the unknown and the unnamed Gradio app go nowhere.
    chosen = discover.choose(list(found.values()))
    assert chosen["llm.lmstudio"]["url"].endswith("/v1")
    assert {t for t in chosen} >= {"services.comfyui", "services.wan2gp", "services.rvc", "services.audioldm",
                                   "llm.ollama", "llm.llamacpp", "llm.lmstudio"}


def test_closed_ports_cost_almost_nothing():
    ports = [free_port() for _ in range(len(discover.DEFAULT_PORTS))]
    start = time.monotonic()
    assert discover.scan(ports=ports) == []
    took = time.monotonic() - start
    print(f"[discover] {len(ports)} closed loopback ports scanned in {took:.3f} s")
    assert took < 3.0
    assert discover.DEFAULT_PORTS == (*range(7860, 7871), 8188, 8189, 8190, 5050, 11434, 1234, 8080, 9931)


CONFIG = """\
# my monitor settings: keep this comment
[services.comfyui]
url = "http://127.0.0.1:8188"   # the old port, before I moved it
required = true

[services.audioldm]
interval = 5  # slow down, it is a laptop

[llm]
active_model = "qwen2.5:7b"   # what the add-on uses
"""


def findings(**urls):
    kinds = {"comfyui": ("comfyui", "comfyui"), "wan2gp": ("gradio", "wan2gp"), "audioldm": ("gradio", "audioldm"),
             "ollama": ("ollama", "llm"), "llamacpp": ("llamacpp", "llm")}
    return [{"kind": kinds[n][0], "service": kinds[n][1], "url": u, "title": "", "version": None, "detail": ""}
            for n, u in urls.items()]


def test_write_keeps_comments_and_other_keys(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    os.chmod(path, 0o640)
    chosen = discover.choose(findings(comfyui="http://127.0.0.1:8189", wan2gp="http://127.0.0.1:7861",
                                      audioldm="http://127.0.0.1:7862", ollama="http://127.0.0.1:11434",
                                      llamacpp="http://127.0.0.1:9931"))
    assert discover.write_config(path, chosen) == "written"
    text = path.read_text()
    for line in ("# my monitor settings: keep this comment", "required = true",
                 "interval = 5  # slow down, it is a laptop", 'active_model = "qwen2.5:7b"   # what the add-on uses'):
        assert line in text
    assert 'url = "http://127.0.0.1:8189"   # the old port, before I moved it' in text
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    cfg = load(path)
    assert cfg.services["comfyui"]["url"] == "http://127.0.0.1:8189" and cfg.services["comfyui"]["required"]
    assert cfg.services["wan2gp"]["url"] == "http://127.0.0.1:7861"
    assert cfg.services["audioldm"]["url"] == "http://127.0.0.1:7862" and cfg.services["audioldm"]["interval"] == 5
    assert cfg.sections["llm"]["active_model"] == "qwen2.5:7b"
    assert cfg.sections["llm"]["ollama"]["url"] == "http://127.0.0.1:11434"
    assert cfg.sections["llm"]["llamacpp"]["url"] == "http://127.0.0.1:9931"
    assert discover.write_config(path, chosen) == "unchanged"  # running it again changes nothing


@pytest.mark.parametrize("text", [
    'services.comfyui.url = "http://127.0.0.1:8188"\n',               # a dotted key at the top
    '[services]\ncomfyui = { url = "http://127.0.0.1:8188" }\n',      # an inline table
    '[services."comfyui"]\nurl = "http://127.0.0.1:8188"\n',          # a quoted table name
    '[services.comfyui]\nurl = """http://127.0.0.1:8188"""\n',        # a multi-line string
])
def test_write_refuses_what_it_cannot_edit_safely(tmp_path, text, capsys):
    path = tmp_path / "config.toml"
    path.write_text(text)
    fake = FakeComfyUI().start()
    try:
        rc = discover.cli_main(["--port", str(fake.port), "--write", "--config", str(path), "--timeout", "10"])
    finally:
        fake.stop()
    err = capsys.readouterr().err
    assert rc == 1 and path.read_text() == text  # untouched
    assert "was not changed" in err and f'[services.comfyui]\nurl = "http://127.0.0.1:{fake.port}"' in err


def test_cli_json_and_write_through_python_m(tmp_path):
    """`python -m probes.discover` (what `md-health discover` runs) with --json and --write."""
    ollama, gradio_app = FakeOllama().start(), FakeGradio("wan2gp").start()
    path = tmp_path / "new" / "config.toml"  # no file yet: it is created
    try:
        out = subprocess.run([sys.executable, "-m", "probes.discover", "--json", "--write", "--config", str(path),
                              "--timeout", "10",
                              "--port", str(gradio_app.port), "--port", str(ollama.port), "--port", str(free_port())],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        ollama.stop()
        gradio_app.stop()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"found", "scanned", "written", "error"}
    assert report["scanned"] == 3 and report["written"] == str(path) and report["error"] is None
    assert [(f["kind"], f["service"]) for f in report["found"]] == [("gradio", "wan2gp"), ("ollama", "llm")]
    assert all(set(f) == {"kind", "service", "url", "title", "version", "detail"} for f in report["found"])
    cfg = load(path)
    assert cfg.services["wan2gp"]["url"] == gradio_app.url
    assert cfg.sections["llm"]["ollama"]["url"] == ollama.url
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_cli_words_and_hosts(capsys):
    fake = FakeGradio("other").start()
    try:
        assert discover.cli_main(["--port", str(fake.port), "--timeout", "10"]) == 0
    finally:
        fake.stop()
    out = capsys.readouterr().out
    assert "Checked 1 ports on 127.0.0.1" in out and "Stable Diffusion (Gradio 4.44.1)" in out
    assert 'flavour = "gradio"' in out
    assert discover._hosts(None) == ["127.0.0.1"]  # loopback only unless hosts are named
    assert discover.cli_main(["--host", "10.0.0.0/24"]) == 2
    assert "not a range" in capsys.readouterr().err


# RVC WebUI in miniature as gradio 3.14 (its pin) serves it: titled "RVC WebUI", named
# endpoints only in /config (3.14 has no /info).
RVC_314_APP = textwrap.dedent("""
    import sys
    import gradio as gr
    with gr.Blocks(title="RVC WebUI") as app:
        box, out = gr.Textbox(), gr.Textbox()
        for name in ("infer_convert", "infer_refresh", "train_start"):
            gr.Button(name).click(lambda x: x, [box], [out], api_name=name)
    app.queue(concurrency_count=511, max_size=1022).launch(server_name="127.0.0.1", server_port=int(sys.argv[1]),
                                                           quiet=True)
""")


def test_real_gradio_314_rvc_is_found_on_a_moved_port(tmp_path):
    """RVC moves to the next free port when 7865 is busy: a real gradio 3.14 app on a free
    port is found and named, its endpoints read from /config."""
    from tests.gradio_envs import ensure_gradio314

    python = str(ensure_gradio314())
    port = free_port()
    script = tmp_path / "rvc.py"
    script.write_text(RVC_314_APP)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*",
           "no_proxy": "*"}
    env.pop("PYTHONPATH", None)  # the 3.14 venv must not see this project's packages
    log = open(tmp_path / "rvc.log", "w")
    proc = subprocess.Popen([python, str(script), str(port)], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        found: list[dict] = []
        while not found:  # until it serves /config (it listens a moment before it answers)
            assert proc.poll() is None, (tmp_path / "rvc.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the gradio 3.14 app never answered"
            found = [f for f in discover.scan(ports=[port], timeout=10.0) if f["kind"] != "unknown"]
            if not found:
                time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait(timeout=20)
        log.close()
    (rvc,) = found
    assert (rvc["kind"], rvc["service"], rvc["title"]) == ("gradio", "rvc", "RVC WebUI")
    assert rvc["version"].startswith("3.14.") and "infer_convert" in rvc["detail"]
    assert discover.table_of(rvc) == "services.rvc"


def test_gradio_314_lock_meets_rvc_pins():
    """The gradio 3.14 venv installs a locked set without resolving it, so the lock is what
    is checked against RVC's pins: every pin is met, and a pin the lock misses is named."""
    from tests.gradio_envs import LOCK, PINS, lock_problems

    assert lock_problems() == []
    assert {p.split("=")[0].lower() for p in LOCK} >= {"gradio", "pydantic", "fastapi", "numpy", "setuptools"}
    assert lock_problems(PINS + ["gradio>=3.15"]) == ["gradio>=3.15: locked 3.14.0"]
    assert lock_problems(["rvc-not-a-package<1"]) == ["rvc-not-a-package<1: locked None"]
