"""Gradio probes (Wan2GP, RVC WebUI, AudioLDM, rvc-python) against fakes of the Gradio 3
and 5 shapes, and against a real Gradio app served by the installed `gradio` package."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from probes.gradio import AudioLDMProbe, GradioProbe, RVCWebUIProbe, Wan2GPProbe
from probes.rvc_python import RVCPythonProbe
from tests.conftest import ROOT, wait_for
from tests.fakes.base import free_port
from tests.fakes.gradio import FakeGradio
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
        assert r.details["queue_depth"] == 3
        assert set(fake.endpoints) <= set(r.capabilities)
        assert fake.hits[prefix + "/info"] == 1 and fake.hits[prefix + "/queue/status"] == 1
        assert r.details["resources"]["process"]["rss_bytes"] > 0
        # /config and /info are read once; later checks only ask for the queue.
        fake.queue_size = 0
        assert probe.check().details["queue_depth"] == 0
        assert fake.hits["/config"] == 1 and fake.hits[prefix + "/queue/status"] == 2


def test_wrong_app_on_the_port_is_an_error_naming_both():
    with FakeGradio("audioldm", port=0) as fake:
        r = Wan2GPProbe("wan2gp", settings(fake.url)).check()
    assert not r.healthy and r.reachable and r.error_kind == "wrong_service"
    assert f"port {fake.port} is serving Gradio, not Wan2GP" in r.error
    with FakeGradio("other") as fake:
        r = AudioLDMProbe("audioldm", settings(fake.url)).check()
    assert f"port {fake.port} is serving Stable Diffusion, not AudioLDM" in r.error
    with FakeGradio("other") as fake:  # expect_title lets a renamed fork through
        assert GradioProbe("x", settings(fake.url, expect_title="Stable Diff")).check().healthy


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


def test_rvc_python_flavour():
    with FakeRVCPython() as fake:
        r = RVCPythonProbe("rvc", settings(fake.url)).check()
        assert r.healthy and r.details["models"] == ["narrator_v2", "villain"]
        assert r.details["params"]["f0method"] == "rmvpe" and "model:villain" in r.capabilities
        assert r.details["queue_depth"] is None  # unknown, not 0
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
        assert r.details["queue_depth"] == 0
        # The same real app is not AudioLDM.
        wrong = AudioLDMProbe("audioldm", settings(f"http://127.0.0.1:{port}", timeout=5.0)).check()
        assert wrong.error_kind == "wrong_service" and f"port {port} is serving WanGP, not AudioLDM" in wrong.error
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
