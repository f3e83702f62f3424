"""Local authentication: `md-health auth init` switches CURVE on for one user's processes.

Real processes only: the aggregator, probes and `md-health status`, each started as its
user would start it, with nothing but that user's config folder to tell them apart. The
user who ran `auth init` (A) sees their probe; another user with no keys (B) or with keys
of their own (C) can neither read the bus nor get a status onto it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus import security
from tests.conftest import ROOT
from tests.fakes.comfyui import FakeComfyUI
from tests.reliability import measured  # noqa: F401 - fixture


UP = ("connected", "degraded")  # degraded: connected while a p95 or queue alert is active (contract C1)


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _user(folder: Path, services: str = "") -> dict[str, str]:
    """The environment one user's processes get: their own config (and so key) folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(services, encoding="utf-8")
    return {"MD_HEALTH_CONFIG": str(folder / "config.toml"), "MD_HEALTH_DATA_DIR": str(folder / "data")}


def _run(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aggregator", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def _intruder(url: str) -> str:
    return f'[services.intruder]\nflavour = "comfyui"\nurl = "{url}"\ninterval = 0.5\nwebsocket = false\n'


def test_auth_init_makes_private_keys_in_the_users_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(security.ENV_DIR, raising=False)
    user = _user(tmp_path / "a")
    off = _run(user, "auth", "status")
    assert off.returncode == 0 and "off" in off.stdout, off
    done = _run(user, "auth", "init")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "a" / "curve"
    assert {p.name for p in folder.iterdir()} == {"server.key", "server.key_secret", "client.key",
                                                   "client.key_secret", "authorized"}
    on = _run(user, "auth", "status")
    assert on.returncode == 0 and f"on: CURVE keys in {folder}" in on.stdout, on
    if os.name == "posix":
        modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
        assert modes == {k: 0o700 if (tmp_path / k).is_dir() else 0o600 for k in modes}, modes
        (folder / "client.key_secret").chmod(0o644)
        loose = _run(user, "auth", "status")
        assert loose.returncode == 1 and "chmod -R go-rwx" in loose.stdout, loose
    again = _run(user, "auth", "init")
    assert again.returncode != 0 and "not overwriting" in again.stderr, again


def test_local_auth_allows_the_same_user_and_refuses_another(tmp_path, endpoints, procs, monkeypatch, measured):
    monkeypatch.delenv(security.ENV_DIR, raising=False)
    a = _user(tmp_path / "a")
    assert _run(a, "auth", "init").returncode == 0
    with FakeComfyUI() as mine, FakeComfyUI() as theirs_b, FakeComfyUI() as theirs_c:
        b = _user(tmp_path / "b", _intruder(theirs_b.url))  # no keys at all
        c = _user(tmp_path / "c", _intruder(theirs_c.url))  # keys of their own
        assert _run(c, "auth", "init").returncode == 0

        agg = procs.aggregator(env=a)
        # The intruders' probes start first, so they have had at least as long as A's.
        intruders = [procs.probe("intruder", env=b), procs.probe("intruder", env=c)]
        procs.probe("comfyui", "--url", mine.url, "--interval", "0.5", env=a)

        start = time.monotonic()
        deadline = start + 60
        seen: dict = {}
        while time.monotonic() < deadline:
            got = _run(a, "status", "--json", "--wait", "10")
            if got.returncode == 0:
                seen = _strict(got.stdout)["services"]
                if seen.get("comfyui", {}).get("state") in UP:
                    break
        assert seen.get("comfyui", {}).get("state") in UP, (seen, procs.output(agg))
        allowed_s = time.monotonic() - start

        # Each intruder probe has checked its backend several times (so it published
        # statuses and heartbeats all along), and is still running: refused, not crashed.
        checks = lambda fake: fake.hits.get("/system_stats", 0)  # noqa: E731
        limit = time.monotonic() + 60
        while time.monotonic() < limit and min(checks(theirs_b), checks(theirs_c)) < 6:
            time.sleep(0.1)
        assert min(checks(theirs_b), checks(theirs_c)) >= 6, (theirs_b.hits, theirs_c.hits)
        assert all(p.poll() is None for p in intruders), [procs.output(p) for p in intruders]
        got = _run(a, "status", "--json", "--wait", "10")
        assert got.returncode == 0, got.stderr
        services = _strict(got.stdout)["services"]
        assert "comfyui" in services and "intruder" not in services, sorted(services)

        # Nor can they read: their `md-health status` finds no monitor at all.
        refused = {}
        for name, env in (("no keys", b), ("other keys", c)):
            got = _run(env, "status", "--wait", "5")
            assert got.returncode == 1 and "monitor offline" in got.stderr, (name, got)
            refused[name] = got.stderr.strip()
        assert agg.poll() is None
    measured.record("local_auth", section="Security", order=25,
                    case="Local authentication (`md-health auth init`): the same user vs. another user",
                    required="with local auth on, another user (no keys, or other keys) can neither read nor inject; "
                             "the user's own probe, aggregator and CLI work unchanged",
                    measured=f"same user: `md-health status` shows their probe's ComfyUI up {allowed_s:.1f} s "
                             "after start; another user without keys and one with their own keys: each one's probe "
                             f"ran {min(checks(theirs_b), checks(theirs_c))}+ checks and none reached the aggregator, "
                             "and each one's `md-health status` exits 1 (monitor offline) after 5 s",
                    allowed_s=round(allowed_s, 2))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_keys_other_users_can_read_are_warned_about_at_load(tmp_path, monkeypatch):
    from bus.config import load

    monkeypatch.delenv(security.ENV_DIR, raising=False)
    folder = tmp_path / "curve"  # next to MD_HEALTH_CONFIG (tests/conftest.py)
    security.init(folder)
    assert load().warnings == []
    folder.chmod(0o755)
    assert any("chmod -R go-rwx" in w for w in load().warnings)
