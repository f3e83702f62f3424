"""ComfyUI probe against the fake ComfyUI: real HTTP, a real WebSocket, real ZeroMQ."""
from __future__ import annotations

import time

import pytest

from probes.comfyui import ComfyUIProbe, job_time
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.tap import BusTap, RunnerThread


@pytest.fixture
def tap(endpoints):
    t = BusTap(endpoints)
    yield t
    t.close()


def settings(url, **kw):
    return {"url": url, "interval": 0.5, "timeout": 1.0, **kw}


def test_check_reads_system_stats_queue_and_job_time():
    with FakeComfyUI() as fake:
        fake.set_queue(1, 2)
        fake.add_finished_job(4200)
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert r.healthy, r.error
    assert r.version == "0.3.40"
    d = r.details
    assert (d["queue_running"], d["queue_pending"], d["queue_depth"]) == (1, 2, 3)
    assert d["pytorch_version"] == "2.5.1+cu124" and d["python_version"].startswith("3.11")
    assert d["devices"][0]["vram_total"] == 25_386_352_640 and d["devices"][0]["vram_free"] == 23_000_000_000
    assert d["ram_total"] == 33_554_432_000
    assert 4100 <= d["job_time_ms"] <= 4300
    res = d["resources"]
    assert res["vram_used_bytes"] == 25_386_352_640 - 23_000_000_000
    assert res["process"]["pid"] > 0 and res["process"]["rss_bytes"] > 0  # the fake runs in this process
    assert res["process"]["cpu_percent"] is None  # first sample: unknown, not 0
    assert res["host"]["ram_total"] > 0
    assert {t.endpoint for t in r.timings} == {"/system_stats", "/queue", "/history"}


def test_job_time_is_none_without_timestamps():
    with FakeComfyUI() as fake:
        fake.add_finished_job(1000, timestamps=False)
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert r.healthy and r.details["job_time_ms"] is None
    assert job_time({}) == (None, None)
    assert job_time({"x": {"status": {"messages": [["execution_start", {"timestamp": 5}]]}}}) == (None, None)


@pytest.mark.parametrize("mode,kind", [("500", "http_status"), ("html", "not_json"), ("truncated", "not_json"),
                                       ("garbage", "wrong_service")])
def test_bad_answers_are_errors_with_advice(mode, kind):
    with FakeComfyUI() as fake:
        fake.mode = mode
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert not r.healthy and r.error_kind == kind and r.reachable


def test_refused_names_the_fix():
    with FakeComfyUI() as fake:
        url = fake.url
    r = ComfyUIProbe("comfyui", settings(url)).check()
    assert r.error_kind == "refused" and not r.reachable
    assert "is ComfyUI running?" in r.error and "python main.py" in r.error


def test_websocket_drop_shows_disconnected_fast(endpoints, tap):
    """With a long poll interval, only the held WebSocket can explain a quick detection."""
    with FakeComfyUI() as fake, RunnerThread(ComfyUIProbe("comfyui", settings(fake.url, interval=30.0)),
                                             endpoints, failures_to_down=2):
        tap.wait_state("connected")
        tap.wait(lambda t: t.last_status()["details"].get("websocket"))
        # A queue change pushed over the socket shows up without waiting for the 30 s poll.
        fake.set_queue(0, 4)
        tap.wait(lambda t: t.last_status()["details"]["queue_depth"] == 4, timeout=5)
        fake.go_down()
        killed = time.monotonic()
        tap.wait_state("disconnected", timeout=10)
        detect = next(ts for ts, m in tap.messages if m.topic == "status.comfyui"
                      and m.body["state"] == "disconnected") - killed
        print(f"ComfyUI detection with WebSocket: {detect * 1000:.0f} ms")
        assert detect < 5.0  # generous for a loaded machine; typically ~0.3 s (interval is 30 s)
        # Recovery: the watcher reconnects and the probe re-checks at once.
        fake.come_up()
        tap.wait_state("connected", timeout=15)


def test_polling_alone_works_without_websocket(endpoints, tap):
    with FakeComfyUI() as fake, RunnerThread(ComfyUIProbe("comfyui", settings(fake.url, websocket=False, interval=0.2)),
                                             endpoints, failures_to_down=2):
        st = tap.wait_state("connected")
        assert st["details"]["websocket"] is False
        fake.go_down()
        tap.wait_state("disconnected", timeout=10)


def test_polling_carries_on_when_the_websocket_is_refused(endpoints, tap):
    """A ComfyUI behind a proxy that does not pass WebSockets: the upgrade gets a 404."""
    fake = FakeComfyUI()
    fake.ws_routes = {}
    with fake, RunnerThread(ComfyUIProbe("comfyui", settings(fake.url, interval=0.2)), endpoints):
        st = tap.wait_state("connected")
        tap.pump(1.0)
        assert tap.last_status()["state"] == "connected" and tap.last_status()["details"]["websocket"] is False
        assert fake.hits.get("/ws", 0) >= 1  # it did try
        fake.set_queue(2, 0)
        tap.wait(lambda t: t.last_status()["details"]["queue_depth"] == 2)
    assert st["details"]["queue_depth"] == 0


def test_resources_of_a_remote_backend_are_unknown_not_zero():
    from probes.resources import ResourceSampler, is_local

    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1")
    assert not is_local("192.0.2.10") and not is_local("gpu-box.example")
    s = ResourceSampler()
    first = s.sample("http://192.0.2.10:8188", None)
    assert first["process"] is None and first["vram_used_bytes"] is None
    assert first["host"]["cpu_percent"] is None  # the first sample has nothing to compare with
    assert s.sample("http://192.0.2.10:8188")["host"]["cpu_percent"] is not None


def test_slow_but_within_the_timeout_is_healthy_and_timed():
    with FakeComfyUI() as fake:
        fake.mode, fake.delay = "slow", 0.3
        r = ComfyUIProbe("comfyui", settings(fake.url, timeout=2.0)).check()
        assert r.healthy and all(t.duration_ms >= 290 for t in r.timings)
        r = ComfyUIProbe("comfyui", settings(fake.url, timeout=0.2)).check()
    assert r.error_kind == "timeout" and "no answer from" in r.error


def test_another_app_on_comfyuis_port():
    from tests.fakes.gradio import FakeGradio

    with FakeGradio("wan2gp") as fake:
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert r.error_kind == "wrong_service" and r.reachable and "is not ComfyUI" in r.error
