"""Resource sampling runs every SAMPLE_EVERY seconds, not at every status check.

Fake clock for the pacing (pure logic); real psutil for the readings. The count of host
readings is taken by wrapping psutil's own cpu_percent (it still does the real work).
"""
from __future__ import annotations

import os

import psutil

from probes import resources
from probes.resources import SAMPLE_EVERY, ResourceSampler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _counting(monkeypatch) -> list[int]:
    calls = [0]
    real = psutil.cpu_percent

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(resources.psutil, "cpu_percent", counted)
    return calls


def test_resources_are_read_every_sample_every_seconds_not_every_check(monkeypatch):
    calls = _counting(monkeypatch)
    clock = Clock()
    s = ResourceSampler(clock=clock)
    first = s.sample("http://192.0.2.10:8188")
    assert first["host"]["cpu_percent"] is None  # nothing to compare with yet
    clock.t += 2.0
    second = s.sample("http://192.0.2.10:8188")  # still unknown: read again at once
    assert second["host"]["cpu_percent"] is not None and calls[0] == 2
    for _ in range(4):  # checks every 2 s within the sampling period repeat the last reading
        clock.t += 2.0
        again = s.sample("http://192.0.2.10:8188", vram_used_bytes=123)
        assert again["host"] == second["host"] and again["vram_used_bytes"] == 123  # VRAM stays current
    assert calls[0] == 2
    clock.t += 2.0  # SAMPLE_EVERY after the last real reading
    assert clock.t - 1002.0 >= SAMPLE_EVERY
    s.sample("http://192.0.2.10:8188")
    assert calls[0] == 3


def test_a_new_url_is_sampled_at_once(monkeypatch):
    calls = _counting(monkeypatch)
    clock = Clock()
    s = ResourceSampler(clock=clock)
    s.sample("http://192.0.2.10:8188")
    s.sample("http://192.0.2.10:8188")
    s.sample("http://192.0.2.11:8188")
    assert calls[0] == 3


def test_a_local_process_gets_real_figures_then_is_paced(monkeypatch):
    # This test process listens on a loopback port: the sampler finds it and reads it.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        calls = _counting(monkeypatch)
        clock = Clock()
        s = ResourceSampler(clock=clock)
        first = s.sample(url)
        if first["process"] is None:  # some platforms hide sockets' owners from non-root users
            return
        assert first["process"]["pid"] == os.getpid() and first["process"]["cpu_percent"] is None
        clock.t += 2.0
        second = s.sample(url)
        assert second["process"]["cpu_percent"] is not None and second["process"]["rss_bytes"] > 0
        clock.t += 2.0
        assert s.sample(url)["process"] == second["process"] and calls[0] == 2


def _count_socket_scans(monkeypatch) -> dict[str, int]:
    """Counts the two costly psutil calls (each wraps the real one)."""
    calls = {"scan": 0, "verify": 0}
    real_scan = psutil.net_connections
    name = "net_connections" if hasattr(psutil.Process, "net_connections") else "connections"
    real_verify = getattr(psutil.Process, name)

    def scan(*args, **kwargs):
        calls["scan"] += 1
        return real_scan(*args, **kwargs)

    def verify(self, *args, **kwargs):
        calls["verify"] += 1
        return real_verify(self, *args, **kwargs)

    monkeypatch.setattr(resources.psutil, "net_connections", scan)
    monkeypatch.setattr(psutil.Process, name, verify)
    return calls


def test_socket_scans_are_rare_while_the_backend_process_lives(monkeypatch):
    import socket

    from probes.resources import VERIFY_EVERY

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        calls = _count_socket_scans(monkeypatch)
        clock = Clock()
        s = ResourceSampler(clock=clock)
        if s.sample(url)["process"] is None:  # sockets' owners hidden from this user: nothing to pace
            return
        assert calls == {"scan": 1, "verify": 0}
        # A check every 2 s for just under VERIFY_EVERY: the known pid is reused, no socket listing.
        while clock.t + 2.0 < 1000.0 + VERIFY_EVERY:
            clock.t += 2.0
            assert s.sample(url)["process"]["pid"] == os.getpid()
        assert calls == {"scan": 1, "verify": 0}
        clock.t += 2.0 + SAMPLE_EVERY
        assert s.sample(url)["process"]["pid"] == os.getpid()
        assert calls == {"scan": 1, "verify": 1}  # then confirmed once, still without a full scan
