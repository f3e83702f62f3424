"""Shared fixtures: free loopback ports, isolated config/data dirs, real processes.

Every test gets its own ports, so several test runs (and a `make run`) can share a machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.client import MonitorClient
from bus.lifeline import spawn, stop as stop_child
from bus.sockets import Endpoints
from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's real config or writes into the user's data directory."""
    monkeypatch.setenv("MD_HEALTH_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("MD_HEALTH_DATA_DIR", str(tmp_path / "data"))
    for key in list(os.environ):
        if key.startswith("MD_HEALTH_") and key.endswith("_URL"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT)
    return tmp_path


@pytest.fixture
def endpoints(monkeypatch) -> Endpoints:
    ep = Endpoints.on_ports(free_port(), free_port(), free_port())
    monkeypatch.setenv("MD_HEALTH_EVENTS", ep.events)
    monkeypatch.setenv("MD_HEALTH_SNAPSHOTS", ep.snapshots)
    monkeypatch.setenv("MD_HEALTH_REQUESTS", ep.requests)
    return ep


class Procs:
    """Starts real child processes (python -m ...) and stops all of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, *args: str, name: str = "proc", env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.children)}.log", "w")
        proc = spawn([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                     env={**os.environ, **(env or {})})
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def aggregator(self, *extra: str, **kw) -> subprocess.Popen:
        return self.start("-m", "aggregator", *extra, "run", name="aggregator", **kw)

    def probe(self, service: str, *extra: str, **kw) -> subprocess.Popen:
        return self.start("-m", "probes", "run", service, *extra, name=f"probe-{service}", **kw)

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        # Every child is asked first (its lifeline closed), then each is waited for: the
        # children shut down side by side instead of one after the other.
        for proc in reversed(self.children):
            try:
                if proc.stdin and proc.poll() is None:
                    proc.stdin.close()
            except OSError:
                pass
        for proc in reversed(self.children):
            stop_child(proc, grace=3.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the tail of every child's log: what a process said
    (a port it could not bind, a traceback) is the evidence, and its tmp dir is gone in CI."""
    outcome = yield
    report = outcome.get_result()
    procs = getattr(item, "funcargs", {}).get("procs")
    if report.failed and isinstance(procs, Procs):
        for proc in procs.children:
            text = Path(proc.log_path).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]
            report.sections.append((f"{Path(proc.log_path).name} (exit {proc.poll()})", text or "(empty)"))


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def wait_for(predicate, timeout: float = 10.0, client: MonitorClient | None = None, every: float = 0.02):
    """Poll until predicate() is truthy (pumping `client` if given); returns its value or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client is not None:
            client.poll(timeout_ms=int(every * 1000))
        else:
            time.sleep(every)
        value = predicate()
        if value:
            return value
    raise AssertionError(f"condition not met within {timeout} s" + (_seen(client) if client is not None else ""))


def _seen(client: MonitorClient) -> str:
    """What the client saw when a wait gave up: whether it is synced, and each service's
    state with the error and liveness its probe last reported."""
    services = "; ".join(f"{name} {s.get('state')} (error {s.get('error')!r}, liveness "
                         f"{(s.get('details') or {}).get('liveness')})" for name, s in client.services.items())
    return f"; the client is {client.state}, online {client.online}; services: {services or 'none'}"


@pytest.fixture
def client(endpoints):
    c = MonitorClient(endpoints, name="test")
    yield c
    c.close()
