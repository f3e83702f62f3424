"""The /metrics endpoint of a real aggregator passes `promtool check metrics`, keeps
Prometheus's type semantics across scrapes (counters never fall, the state is a StateSet),
and a real Prometheus scrapes it on loopback."""
from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from bus.protocol import STATES, Publisher
from bus.sockets import close, new_context, pub_socket
from bus.usage import UsageReporter
from tests.conftest import wait_for
from tests.fakes.base import free_port


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _scrape(port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.read().decode()


def _need(tool: str) -> str:
    """The tool's path; without it the test is skipped, except under CI, which installs it."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} (Debian package prometheus) is not installed; .ci/run installs it")
        pytest.skip(f"{tool} (Debian package prometheus) not installed")
    return path


def _promtool_check(promtool: str, text: str) -> None:
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_metrics_endpoint_passes_promtool(endpoints, procs, client):
    promtool = _need("promtool")
    port = free_port()
    procs.start("-m", "aggregator", "run", "--metrics-port", str(port), name="aggregator")
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.p")
    usage = UsageReporter(endpoints, context=ctx)
    try:
        def fed():
            pub.send("heartbeat.probe.p", {"interval": 1.0, "services": ["comfyui", "llm"]})
            pub.send("status.comfyui", {"service": "comfyui", "state": "connected", "required": True,
                                        "details": {"queue_depth": 2}})
            pub.send("timing.comfyui", {"service": "comfyui", "endpoint": "/", "duration_ms": 30.0, "ok": True})
            pub.send("status.llm", {"service": "llm", "state": "connected",
                                    "details": {"providers": {"openai": {"state": "valid"}}}})
            usage.report("gpt-4o", 100, 20, 900.0, provider="openai")
            return (client.services.get("comfyui", {}).get("state") == "connected"
                    and client.services.get("llm", {}).get("usage", {}).get("total_tokens"))
        wait_for(fed, timeout=20, client=client, every=0.2)
        # The endpoint serves what the aggregator handed it at its last heartbeat (once a second).
        text = wait_for(lambda: (t := _try_scrape(port)) and "md_health_llm_tokens_total{" in t
                        and 'md_health_probe_success{service="comfyui"}' in t and t, timeout=15)
        assert 'md_health_probe_success{service="comfyui"} 1.0' in text
        assert 'md_health_probe_duration_seconds{quantile="0.95",service="comfyui",window="5m"}' in text
        assert 'md_health_uptime_ratio{service="comfyui",window="24h"}' in text
        assert 'md_health_queue_depth{service="comfyui"} 2.0' in text
        assert 'md_health_llm_tokens_total{direction="in",model="gpt-4o"}' in text
        assert "md_health_history_persisted 1.0" in text
        assert 'md_health_state{md_health_state="connected",service="comfyui"} 1.0' in text
        assert 'md_health_state{md_health_state="error",service="comfyui"} 0.0' in text
        _promtool_check(promtool, text)
    finally:
        usage.close()
        close(pub.socket)
        ctx.term()


def _try_scrape(port: int) -> str | None:
    try:
        return _scrape(port)
    except OSError:
        return None


def _samples(text: str) -> tuple[dict, dict]:
    """(values of every sample that must never fall: counters, summary _count/_sum), and
    {service: {state: value}} of the md_health_state StateSet."""
    monotone, states = {}, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if family.type == "counter" or (family.type == "summary" and sample.name.endswith(("_count", "_sum"))):
                monotone[key] = sample.value
            if family.name == "md_health_state":
                states.setdefault(sample.labels["service"], {})[sample.labels.get("md_health_state")] = sample.value
    return monotone, states


def _gauge(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_ten_scrapes_counters_never_fall_and_the_state_is_a_stateset(endpoints, procs, isolated_env):
    """Ten scrapes with traffic between them, over a 3 s window that fills and then empties
    as its samples slide out: no counter and no summary _count/_sum ever decreases, every
    scrape passes promtool, and the state is a StateSet with every state 0 or 1."""
    promtool = _need("promtool")
    (isolated_env / "config.toml").write_text('[aggregator]\ntiers = ["1s:3s", "3s:30s"]\n')
    port = free_port()
    procs.start("-m", "aggregator", "run", "--metrics-port", str(port), name="aggregator")
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.p")
    usage = UsageReporter(endpoints, context=ctx)
    # Per round: the state the backend reports, and whether it is being timed (rounds 4-7
    # are quiet, so the 3 s window's samples slide out and its figures fall).
    rounds = [("connected", True), ("connected", True), ("error", True), ("error", True),
              ("disconnected", False), ("disconnected", False), ("connected", False), ("connected", False),
              ("error", True), ("connected", True)]
    seen: dict = {}
    scraped: list[str] = []
    requests_3s: list[float] = []

    def check(text: str) -> None:
        monotone, states = _samples(text)
        for key, v in monotone.items():
            assert v >= seen.get(key, v), f"{key} fell from {seen[key]} to {v} (scrape {len(scraped)})"
            seen[key] = v
        for service, by_state in states.items():
            assert set(by_state) == set(STATES), (service, by_state)
            assert sorted(by_state.values()) == [0.0] * (len(STATES) - 1) + [1.0], (service, by_state)
        list(parse_openmetrics(_scrape(port, OPENMETRICS)))  # the strict OpenMetrics parser takes it too
        n = _gauge(text, "md_health_window_requests", service="comfyui", window="3s")
        if n is not None:
            requests_3s.append(n)

    try:
        llm_before = 0.0
        for i, (state, timed) in enumerate(rounds):
            def fed():
                pub.send("heartbeat.probe.p", {"interval": 1.0, "services": ["comfyui", "llm"]})
                pub.send("status.comfyui", {"service": "comfyui", "state": state})
                pub.send("status.llm", {"service": "llm", "state": "connected"})
                if timed:
                    pub.send("timing.comfyui", {"service": "comfyui", "endpoint": "/", "duration_ms": 10.0 + i,
                                                "ok": True})
                text = _try_scrape(port)
                if text is None:
                    return None
                check(text)
                llm = _gauge(text, "md_health_llm_requests_total", model="gpt-4o") or 0.0
                if llm <= llm_before:
                    usage.report("gpt-4o", 100, 20, 900.0, provider="openai")  # again until it shows
                    return None
                in_window = _gauge(text, "md_health_window_requests", service="comfyui", window="3s")
                # A quiet round ends once its window has emptied; a timed one once it has samples.
                filled = in_window is not None and (in_window > 0 if timed else i < 7 or in_window == 0)
                shown = _gauge(text, "md_health_state", service="comfyui", md_health_state=state) == 1.0
                return text if shown and filled else None
            text = wait_for(fed, timeout=30, every=0.25)
            llm_before = _gauge(text, "md_health_llm_requests_total", model="gpt-4o")
            _promtool_check(promtool, text)
            scraped.append(text)
        assert len(scraped) == 10
        # The window did slide: its request count rose and fell, while no counter fell.
        peak = requests_3s.index(max(requests_3s))
        assert max(requests_3s) > 0 and min(requests_3s[peak:]) == 0, requests_3s
        assert not any("md_health_probe_duration_seconds_count" in t for t in scraped)
    finally:
        usage.close()
        close(pub.socket)
        ctx.term()


def test_a_real_prometheus_scrapes_it(endpoints, procs, client, tmp_path):
    import json
    import urllib.parse

    _need("prometheus")
    port, web = free_port(), free_port()
    procs.start("-m", "aggregator", "run", "--metrics-port", str(port), name="aggregator")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: md-health\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.p")
    try:
        def query():
            pub.send("heartbeat.probe.p", {"interval": 1.0, "services": ["comfyui"]})
            pub.send("status.comfyui", {"service": "comfyui", "state": "connected"})
            pub.send("timing.comfyui", {"service": "comfyui", "endpoint": "/", "duration_ms": 30.0, "ok": True})
            q = urllib.parse.quote('md_health_probe_duration_seconds{service="comfyui",window="5m",quantile="0.5"}')
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/query?query={q}", timeout=2) as r:
                    result = json.load(r)["data"]["result"]
            except OSError:
                return None
            return result and float(result[0]["value"][1])
        p50 = wait_for(query, timeout=40, every=0.5)
        assert p50 == pytest.approx(0.030, rel=0.01)
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/targets", timeout=5) as r:
            target = json.load(r)["data"]["activeTargets"][0]
        assert target["health"] == "up" and not target["lastError"]
    finally:
        prom.terminate()
        prom.wait(10)
        close(pub.socket)
        ctx.term()
