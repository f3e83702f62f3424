"""Gradio probes (Wan2GP, RVC WebUI, AudioLDM, rvc-python) against fakes of the Gradio
3.14, 3.50 and 5 shapes, and against real Gradio apps: the installed `gradio` (6.x) and
gradio 3.14 (RVC's pin) in a venv of its own (tests/gradio_envs.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from probes.comfyui import ComfyUIProbe
from probes.gradio import AudioLDMProbe, GradioProbe, RVCWebUIProbe, Wan2GPProbe, named_endpoints, ui_heading
from probes.rvc_python import RVCPythonProbe
from tests.conftest import ROOT, wait_for
from tests.fakes.base import free_port
from tests.fakes.gradio import RVC_ENDPOINTS, FakeGradio
from tests.fakes.rvc_python import FakeRVCPython
from tests.fakes.tap import BusTap, RunnerThread


def settings(url, **kw):
    return {"url": url, "interval": 0.2, "timeout": 2.0, **kw}


@pytest.mark.parametrize("cls,app,major,prefix", [
    (Wan2GPProbe, "wan2gp", "5", "/gradio_api"),
    (RVCWebUIProbe, "rvc", "3", ""),
    (AudioLDMProbe, "audioldm", "3", ""),
])
def test_each_app_through_its_gradio_version(cls, app, major, prefix):
    with FakeGradio(app) as fake:
        fake.queue_size = 3
        probe = cls(app, settings(fake.url))
        r = probe.check()
        assert r.healthy, r.error
        assert r.details["gradio_version"].startswith(major + ".") and r.version.startswith("gradio " + major)
        assert set(fake.endpoints) <= set(r.capabilities)
        assert r.details["endpoints"] == sorted(fake.endpoints)
        assert fake.hits.get(prefix + "/info", 0) == 0  # the names come from /config, in every version
        assert fake.hits[prefix + "/queue/status"] == 1
        assert r.details["resources"]["process"]["rss_bytes"] > 0
        # /config is read once; later checks only ask for the queue.
        fake.queue_size = 0
        probe.check()
        assert fake.hits["/config"] == 1 and fake.hits[prefix + "/queue/status"] == 2


def test_rvc_named_endpoints_on_gradio_314_which_has_no_info():
    """RVC pins gradio 3.14, whose /info answers 404: its 14 names are in /config."""
    with FakeGradio("rvc") as fake:
        assert fake.gradio_version.startswith("3.14.")
        r = RVCWebUIProbe("rvc", settings(fake.url)).check()
    assert r.healthy, r.error
    assert r.details["endpoints"] == sorted(RVC_ENDPOINTS) and r.details["endpoint_count"] == 14
    assert "infer_convert" in r.capabilities and "voice" in r.capabilities


@pytest.mark.parametrize("version", ["3.14.0", "4.44.1", "5.29.0", "6.31.0"])
def test_hidden_and_unnamed_listeners_are_not_endpoints(version):
    """As /info lists them: show_api=False (3.x-5.x) and api_visibility != "public" (6.x,
    which writes api_name=False as the string "false") are hidden; no api_name is unnamed."""
    with FakeGradio("other", version=version) as fake:
        fake.hidden_endpoints = [] if version.startswith("3") else ["false", "secret"]
        cfg = fake.config({})
    cfg["dependencies"].append({"api_name": "js_only", "backend_fn": False})
    assert named_endpoints(cfg) == ["txt2img"]
    assert named_endpoints({"dependencies": "nonsense"}) == [] and named_endpoints({}) == []


@pytest.mark.parametrize("app,queue_size,waiting", [("rvc", 2, 2), ("audioldm", 0, 0)])
def test_queue_waiting_is_gradios_queue_size_and_running_is_unknown(app, queue_size, waiting):
    """Contract C2: Gradio's queue_size counts what waits; nothing says what runs."""
    with FakeGradio(app) as fake:
        fake.queue_size = queue_size
        d = GradioProbe(app, settings(fake.url)).check().details
    assert (d["queue_running"], d["queue_waiting"], d["queue_depth"]) == (None, waiting, waiting)
    assert "queue_note" not in d


def test_wan2gp_queue_is_unknown_with_the_reason():
    """Wan2GP runs all its video tasks inside one process_tasks event: Gradio's queue_size
    says nothing about them, so both counts are unknown, not 0."""
    with FakeGradio("wan2gp") as fake:
        fake.queue_size = 1
        d = Wan2GPProbe("wan2gp", settings(fake.url)).check().details
    assert (d["queue_running"], d["queue_waiting"], d["queue_depth"]) == (None, None, None)
    assert "process_tasks" in d["queue_note"]


def test_queue_without_a_queue_is_unknown():
    with FakeGradio("audioldm") as fake:
        del fake.routes["/queue/status"]  # launched without .queue(): 404
        r = AudioLDMProbe("audioldm", settings(fake.url)).check()
    assert r.healthy and (r.details["queue_waiting"], r.details["queue_depth"]) == (None, None)


def test_wrong_app_on_the_port_is_an_error_naming_both():
    with FakeGradio("audioldm", port=0) as fake:
        r = Wan2GPProbe("wan2gp", settings(fake.url)).check()
    assert not r.healthy and r.reachable and r.error_kind == "wrong_service"
    # AudioLDM sets no title: it is named by its <h1> and its Gradio version.
    assert f"port {fake.port} is serving AudioLDM (untitled Gradio 3.50 app), not Wan2GP" in r.error
    with FakeGradio("other") as fake:
        r = AudioLDMProbe("audioldm", settings(fake.url)).check()
    assert f"port {fake.port} is serving Stable Diffusion, not AudioLDM" in r.error
    with FakeGradio("other", title="") as fake:  # no title and no heading: say only what is known
        fake.ui = ("markdown", "Some other app")
        r = AudioLDMProbe("audioldm", settings(fake.url)).check()
    assert f"port {fake.port} is serving an untitled Gradio 4.44 app, not AudioLDM" in r.error
    with FakeGradio("other") as fake:  # expect_title lets a renamed fork through
        assert GradioProbe("x", settings(fake.url, expect_title="Stable Diff")).check().healthy


@pytest.mark.parametrize("value,heading", [
    ("<div><h1 style='x'>\n  AudioLDM: Text-to-Audio\n</h1></div>", "AudioLDM: Text-to-Audio"),
    ("# My <b>App</b> &amp; more\n\nbody", "My App & more"),  # 4.x+ keeps Markdown source
    ("<h2>RVC WebUI</h2>", ""),  # only a top-level heading names the app
    ("## not h1\n", ""),
])
def test_ui_heading(value, heading):
    cfg = {"components": [{"id": 1, "type": "markdown", "props": {"value": 3}},
                          {"id": 2, "type": "html", "props": {"value": value}}]}
    assert ui_heading(cfg) == heading
    assert ui_heading({"components": "x"}) == ""


def test_a_long_heading_is_bounded_in_the_message():
    with FakeGradio("audioldm") as fake:
        fake.ui = ("html", "<h1>" + "Very Long Name " * 50 + "</h1>")
        r = Wan2GPProbe("wan2gp", settings(fake.url)).check()
    shown = r.error.split("is serving ", 1)[1].split(" (untitled", 1)[0]
    assert len(shown) <= 60 and shown.startswith("Very Long Name")


def test_wrong_app_reaches_error_state_through_damping(endpoints):
    tap = BusTap(endpoints)
    try:
        with FakeGradio("rvc") as fake, RunnerThread(Wan2GPProbe("wan2gp", settings(fake.url)), endpoints,
                                                    failures_to_down=2):
            st = tap.wait_state("error")
        assert "is serving RVC WebUI, not Wan2GP" in st["error"]
        statuses = tap.statuses("wan2gp")
        first_error = next(i for i, s in enumerate(statuses) if s["state"] == "error")
        before = statuses[first_error - 1]  # the first failure only says "retrying"
        assert before["state"] == "connecting" and "not Wan2GP" in before["error"]
    finally:
        tap.close()


@pytest.mark.parametrize("mode,kind", [("500", "http_status"), ("html", "not_json"), ("garbage", "wrong_service")])
def test_gradio_bad_answers(mode, kind):
    with FakeGradio("wan2gp") as fake:
        fake.mode = mode
        r = Wan2GPProbe("wan2gp", settings(fake.url)).check()
    assert not r.healthy and r.error_kind == kind


def test_hang_times_out_with_advice():
    with FakeGradio("rvc") as fake:
        fake.mode = "hang"
        r = RVCWebUIProbe("rvc", settings(fake.url, timeout=0.3)).check()
    assert r.error_kind == "timeout" and "may be busy or hung" in r.error


def test_refused_says_how_to_start_it():
    url = f"http://127.0.0.1:{free_port()}"
    r = AudioLDMProbe("audioldm", settings(url)).check()
    assert r.error_kind == "refused" and "is AudioLDM running?" in r.error and "GRADIO_SERVER_PORT" in r.error


def test_nothing_on_rvcs_port_names_webui_py_and_the_port_it_moves_to():
    """RVC's webui.py took over from infer-web.py, and it takes the next free port when
    7865 is busy (launch_webui_with_port_fallback)."""
    r = RVCWebUIProbe("rvc", settings(f"http://127.0.0.1:{free_port()}")).check()
    assert r.error_kind == "refused" and "is RVC WebUI running?" in r.error
    assert "python webui.py" in r.error and "infer-web" not in r.error
    assert "next free port" in r.error and "services.rvc.url" in r.error


@pytest.mark.parametrize("probe", [Wan2GPProbe("w", {}), RVCWebUIProbe("r", {}), AudioLDMProbe("a", {}),
                                   RVCPythonProbe("r", {}), ComfyUIProbe("c", {})])
def test_hints_shown_to_people_carry_no_markup(probe):
    assert probe.hint and "`" not in probe.hint and "*" not in probe.hint


def test_rvc_python_flavour():
    with FakeRVCPython() as fake:
        r = RVCPythonProbe("rvc", settings(fake.url)).check()
        assert r.healthy and r.details["models"] == ["narrator_v2", "villain"]
        assert r.details["params"]["f0method"] == "rmvpe" and "model:villain" in r.capabilities
        assert (r.details["queue_running"], r.details["queue_waiting"], r.details["queue_depth"]) == (None, None, None)
    with FakeGradio("rvc") as fake:  # the WebUI where rvc-python was expected
        r = RVCPythonProbe("rvc", settings(fake.url)).check()
    assert not r.healthy and r.error_kind == "http_status" and "rvc-python" in r.error


REAL_APP = textwrap.dedent("""
    import os, sys
    import gradio as gr

    def generate_video(prompt):
        return prompt

    with gr.Blocks(title="WanGP") as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        gr.Button("Generate").click(generate_video, box, out, api_name="generate_video")
    demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), share=False,
                        prevent_thread_lock=False, show_error=False)
""")


def test_against_a_real_gradio_app(tmp_path):
    """The installed gradio (6.x) serves /config and /gradio_api/*: the probe must read it
    as it reads Wan2GP's Gradio 5, and tell it apart from the wrong app."""
    pytest.importorskip("gradio")
    port = free_port()
    script = tmp_path / "app.py"
    script.write_text(REAL_APP)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "no_proxy": "*"}
    log = open(tmp_path / "gradio.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        probe = Wan2GPProbe("wan2gp", settings(f"http://127.0.0.1:{port}", timeout=5.0))
        r = wait_for(lambda: (res := probe.check()).healthy and res, timeout=90, every=0.5)
        import gradio
        assert r.details["gradio_version"] == gradio.__version__
        assert r.details["title"] == "WanGP"
        assert "generate_video" in r.capabilities
        assert r.details["queue_depth"] is None and "process_tasks" in r.details["queue_note"]
        # The same real app is not AudioLDM.
        wrong = AudioLDMProbe("audioldm", settings(f"http://127.0.0.1:{port}", timeout=5.0)).check()
        assert wrong.error_kind == "wrong_service" and f"port {port} is serving WanGP, not AudioLDM" in wrong.error
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


# RVC's webui.py in miniature: its title, its 14 api_names and its queue call, as gradio
# 3.14 takes it (4.0 dropped concurrency_count).
RVC_APP = textwrap.dedent("""
    import sys
    import gradio as gr

    NAMES = sys.argv[2].split(",")

    def same(x):
        return x

    with gr.Blocks(title="RVC WebUI") as app:
        box = gr.Textbox()
        out = gr.Textbox()
        for name in NAMES:
            gr.Button(name).click(same, [box], [out], api_name=name)
        gr.Button("unnamed").click(same, [box], [out])
    try:
        queued = app.queue(concurrency_count=511, max_size=1022)
    except TypeError:
        queued = app.queue(max_size=1022)
    queued.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
""")


@pytest.fixture(scope="session")
def gradio314_python():
    """The python of build/venv-gradio314, built on first use (tests/gradio_envs.py)."""
    from tests.gradio_envs import ensure_gradio314

    return str(ensure_gradio314())


def _run_real_app(tmp_path, python, source, *args):
    port = free_port()
    script = tmp_path / f"app_{port}.py"
    script.write_text(source)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "no_proxy": "*"}
    env.pop("PYTHONPATH", None)  # the 3.14 venv must not see this project's .venv packages
    log = open(tmp_path / f"gradio_{port}.log", "w")
    proc = subprocess.Popen([python, str(script), str(port), *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return port, proc, log


@pytest.mark.parametrize("which", ["3.14", "installed"])
def test_rvc_named_endpoints_on_real_gradio(which, tmp_path, request):
    """RVC's 14 named endpoints are found on a real gradio 3.14 (no /info) and on the
    installed gradio (6.x, /gradio_api/info)."""
    python = request.getfixturevalue("gradio314_python") if which == "3.14" else sys.executable
    port, proc, log = _run_real_app(tmp_path, python, RVC_APP, ",".join(RVC_ENDPOINTS))
    try:
        probe = RVCWebUIProbe("rvc", settings(f"http://127.0.0.1:{port}", timeout=5.0))
        r = wait_for(lambda: (res := probe.check()).healthy and res, timeout=120, every=0.5)
        if which == "3.14":
            assert r.details["gradio_version"].startswith("3.14.")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5)
            assert info.value.code == 404  # the reason /config is read instead
            assert r.details["endpoints"] == sorted(RVC_ENDPOINTS)
        else:
            # Gradio 4+ names the unnamed listener after its function ("same"); the probe's
            # list is exactly what the real /info lists.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=5) as resp:
                listed = sorted(name.lstrip("/") for name in json.load(resp)["named_endpoints"])
            assert r.details["endpoints"] == listed and set(RVC_ENDPOINTS) <= set(listed)
        assert r.details["title"] == "RVC WebUI"
        assert r.details["queue_waiting"] == 0 and r.details["queue_running"] is None
        wrong = Wan2GPProbe("wan2gp", settings(f"http://127.0.0.1:{port}", timeout=5.0)).check()
        assert wrong.error_kind == "wrong_service" and "is serving RVC WebUI, not Wan2GP" in wrong.error
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
