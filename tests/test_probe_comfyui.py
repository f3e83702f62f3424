"""ComfyUI probe against the fake ComfyUI: real HTTP, a real WebSocket, real ZeroMQ; the
job API of newer builds and /history of older ones, and every GPU of /system_stats."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from probes.comfyui import ComfyUIProbe, history_jobs, latest_job
from tests.fakes.comfyui import RTX_3090, RTX_4090, FakeComfyUI
from tests.fakes.tap import BusTap, RunnerThread


@pytest.fixture
def tap(endpoints):
    t = BusTap(endpoints)
    yield t
    t.close()


def settings(url, **kw):
    return {"url": url, "interval": 0.5, "timeout": 1.0, **kw}


@pytest.mark.parametrize("jobs_api", [True, False])
def test_check_reads_system_stats_queue_and_job_time(jobs_api):
    with FakeComfyUI(jobs_api=jobs_api) as fake:
        fake.set_queue(1, 2)
        fake.add_finished_job(4200)
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert r.healthy, r.error
    assert r.version == fake.version
    d = r.details
    # Contract C2: ComfyUI tells both what runs and what waits.
    assert (d["queue_running"], d["queue_waiting"], d["queue_depth"]) == (1, 2, 3)
    assert d["pytorch_version"] == "2.5.1+cu124" and d["python_version"].startswith("3.11")
    assert d["devices"] == [{"name": RTX_4090["name"], "type": "cuda", "index": 0,
                             "vram_total": 25_386_352_640, "vram_free": 23_000_000_000}]
    assert d["ram_total"] == 33_554_432_000
    assert 4100 <= d["job_time_ms"] <= 4300 and d["last_job_status"] == "completed"
    assert d["jobs_api"] is jobs_api and d["recent_failed_jobs"] == 0
    res = d["resources"]
    assert res["vram_used_bytes"] == 25_386_352_640 - 23_000_000_000
    assert res["process"]["pid"] > 0 and res["process"]["rss_bytes"] > 0  # the fake runs in this process
    assert res["process"]["cpu_percent"] is None  # first sample: unknown, not 0
    assert res["host"]["ram_total"] > 0
    jobs_path = {"/api/jobs"} if jobs_api else {"/api/jobs", "/history"}  # an old build: 404, then /history
    assert {t.endpoint for t in r.timings} == {"/system_stats", "/queue"} | jobs_path


def test_job_api_gives_failed_jobs_and_the_latest_time():
    with FakeComfyUI() as fake:
        fake.add_finished_job(1000, ago_ms=9000)
        failed = fake.add_finished_job(2500, error="CUDA out of memory. Tried to allocate 2.00 GiB", ago_ms=1000)
        fake.add_finished_job(700, ago_ms=5000)
        probe = ComfyUIProbe("comfyui", settings(fake.url))
        d = probe.check().details
        assert d["last_job_id"] == failed and d["last_job_status"] == "failed"
        assert d["last_job_error"].startswith("CUDA out of memory") and 2400 <= d["job_time_ms"] <= 2600
        assert d["recent_failed_jobs"] == 1
        assert fake.hits.get("/history", 0) == 0  # the job API is enough where it exists


def test_the_probe_never_sends_a_prompt_id():
    """Newer ComfyUI refuses a client prompt_id that is not a lowercase UUID; the probe
    only reads, and names no prompt in any request."""
    with FakeComfyUI() as fake:
        fake.set_queue(1, 1)
        fake.add_finished_job(100)
        probe = ComfyUIProbe("comfyui", settings(fake.url))
        for _ in range(3):
            assert probe.check().healthy
        fake.set_queue(0, 0)  # a job finished: the jobs are read again
        assert probe.check().healthy
    assert fake.requests and all("prompt_id" not in path and "prompt" not in path.split("?")[0] for path in fake.requests)
    assert {p.split("?")[0] for p in fake.requests} <= {"/system_stats", "/queue", "/api/jobs", "/history"}


def test_every_gpu_primary_first():
    """Contract C3: all of /system_stats devices[], in ComfyUI's order (primary first)."""
    cpu = {"name": "cpu", "type": "cpu", "index": None, "vram_total": 33_554_432_000, "vram_free": 20_000_000_000,
           "torch_vram_total": 33_554_432_000, "torch_vram_free": 20_000_000_000}
    with FakeComfyUI(devices=[RTX_3090, RTX_4090, cpu]) as fake:
        d = ComfyUIProbe("comfyui", settings(fake.url)).check().details
    assert [(g["index"], g["type"]) for g in d["devices"]] == [(1, "cuda"), (0, "cuda"), (None, "cpu")]
    assert d["devices"][0] == {"name": RTX_3090["name"], "type": "cuda", "index": 1,
                               "vram_total": 25_769_279_488, "vram_free": 12_000_000_000}
    # VRAM in use is the GPUs' (the CPU "device" is system RAM).
    assert d["resources"]["vram_used_bytes"] == (25_769_279_488 - 12_000_000_000) + (25_386_352_640 - 23_000_000_000)


def test_devices_a_backend_sends_are_bounded():
    odd = [{"name": "x" * 10_000, "type": "cuda", "index": True, "vram_total": "big", "vram_free": -1}] * 100
    with FakeComfyUI(devices=odd) as fake:
        d = ComfyUIProbe("comfyui", settings(fake.url)).check().details
    assert len(d["devices"]) == 16 and len(d["devices"][0]["name"]) == 200
    assert d["devices"][0]["index"] is None and d["devices"][0]["vram_total"] is None
    assert d["resources"]["vram_used_bytes"] is None


def test_job_time_is_none_without_timestamps():
    with FakeComfyUI(jobs_api=False) as fake:
        fake.add_finished_job(1000, timestamps=False)
        r = ComfyUIProbe("comfyui", settings(fake.url)).check()
    assert r.healthy and r.details["job_time_ms"] is None
    assert latest_job(history_jobs({})) is None
    assert latest_job(history_jobs({"x": {"status": {"messages": [["execution_start", {"timestamp": 5}]]}}})) is None
    assert latest_job([{"status": "completed", "execution_start_time": True, "execution_end_time": 9}]) is None


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


def _thread_switches(native_id: int) -> int:
    text = open(f"/proc/self/task/{native_id}/status").read()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread counters are in Linux's /proc")
def test_the_held_websocket_sleeps_until_comfyui_speaks(endpoints, tap):
    """The watcher blocks in recv() with no timeout (figure 15's idle CPU): a recv(timeout=0.5)
    loop woke it about 2-4 times a second on a quiet socket. Stopping the probe still ends it."""
    with FakeComfyUI() as fake, RunnerThread(ComfyUIProbe("comfyui", settings(fake.url, interval=30.0)),
                                             endpoints):
        tap.wait(lambda t: (t.last_status() or {}).get("details", {}).get("websocket"), timeout=20)
        watcher = next(t for t in threading.enumerate() if t.name == "comfyui-ws")
        before, t0 = _thread_switches(watcher.native_id), time.monotonic()
        tap.pump(6.0)
        rate = (_thread_switches(watcher.native_id) - before) / (time.monotonic() - t0)
        print(f"idle WebSocket thread: {rate:.2f} wakeups a second")
        assert rate < 0.5
        fake.set_queue(0, 3)  # a frame still wakes it at once
        tap.wait(lambda t: t.last_status()["details"]["queue_depth"] == 3, timeout=10)
    watcher.join(timeout=10)
    assert not watcher.is_alive()


def test_with_the_websocket_held_queue_is_read_only_after_news(endpoints, tap):
    """ComfyUI announces every queue change on /ws, so a held socket spares a /queue request
    per check (figure 15: 60 requests a minute against the peer's 30); news reads it again."""
    with FakeComfyUI() as fake, RunnerThread(ComfyUIProbe("comfyui", settings(fake.url, interval=0.2)), endpoints):
        tap.wait(lambda t: (t.last_status() or {}).get("details", {}).get("websocket"), timeout=20)
        checks0, queue0 = fake.hits.get("/system_stats", 0), fake.hits.get("/queue", 0)
        tap.wait(lambda t: fake.hits.get("/system_stats", 0) >= checks0 + 10, timeout=30)
        checks, queued = fake.hits["/system_stats"] - checks0, fake.hits.get("/queue", 0) - queue0
        print(f"{checks} checks, {queued} /queue reads")
        assert queued <= 1  # the first check after the socket opened may still read it
        fake.set_queue(1, 2)  # pushed as "status" on the socket
        tap.wait(lambda t: t.last_status()["details"]["queue_waiting"] == 2, timeout=10)
        assert tap.last_status()["details"]["queue_running"] == 1
