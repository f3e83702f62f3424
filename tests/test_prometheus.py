"""The /metrics endpoint of a real aggregator passes `promtool check metrics`, and a real
Prometheus scrapes it on loopback."""
from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from bus.protocol import Publisher
from bus.sockets import close, new_context, pub_socket
from bus.usage import UsageReporter
from tests.conftest import wait_for
from tests.fakes.base import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_metrics_endpoint_passes_promtool(endpoints, procs, client):
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
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        usage.close()
        close(pub.socket)
        ctx.term()


def _try_scrape(port: int) -> str | None:
    try:
        return _scrape(port)
    except OSError:
        return None


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian package) not installed")
def test_a_real_prometheus_scrapes_it(endpoints, procs, client, tmp_path):
    import json
    import urllib.parse

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
