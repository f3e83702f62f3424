"""The history file under faults, with a real aggregator process each time.

Corrupt file and a file from a future schema: moved aside with a warning, fresh start.
Data directory unusable, or the disk filling up mid-run: the aggregator keeps running
in memory and says so (log line and heartbeat `persistence`).
"""
from __future__ import annotations

import os
import random
import sqlite3
import sys
import time

import pytest

from bus.protocol import Publisher
from bus.sockets import close, new_context, pub_socket
from tests.conftest import wait_for
from tests.reliability import measured  # noqa: F401 - fixture

FILENAME = "metrics.sqlite3"


def _status(service: str) -> dict:
    return {"service": service, "kind": "test", "state": "connected", "url": "", "required": False, "version": "",
            "capabilities": [], "error": "", "error_kind": "", "details": {}, "interval": 1.0, "timeout": 1.0}


def _persistence(client) -> dict:
    return client.aggregator.get("persistence") or {}


def _works(client, endpoints, service: str) -> None:
    """The aggregator accepts events and answers snapshots."""
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pub = Publisher(sock, f"probe.{service}")
    try:
        wait_for(lambda: pub.send(f"status.{service}", _status(service)) and service in client.services,
                 timeout=20, client=client)
        client.has_snapshot = False
        client.request_snapshot()
        wait_for(lambda: client.has_snapshot, timeout=10, client=client)
    finally:
        close(sock)
        ctx.term()


@pytest.mark.parametrize("damage", ["corrupt", "future_schema"])
def test_unreadable_history_file_is_quarantined(damage, isolated_env, endpoints, procs, client, measured):
    data = isolated_env / "data"
    data.mkdir()
    path = data / FILENAME
    if damage == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + random.Random(3).randbytes(20000))
    else:
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                         "INSERT INTO meta VALUES ('schema_version', '99');")
        db.commit()
        db.close()
    original = path.read_bytes()
    agg = procs.aggregator()
    wait_for(lambda: _persistence(client).get("mode") == "sqlite", timeout=20, client=client)
    quarantined = _persistence(client).get("quarantined")
    assert quarantined and os.path.exists(quarantined), _persistence(client)
    with open(quarantined, "rb") as f:
        assert f.read() == original  # moved aside intact, for a person to look at
    _works(client, endpoints, "after-quarantine")
    log = procs.output(agg)
    warning = next(line for line in log.splitlines() if "moved it aside" in line)
    assert "Traceback" not in log and agg.poll() is None
    if damage == "future_schema":
        assert "from a newer version" in warning
    text = warning.split(" WARNING ", 1)[-1].replace(str(data), "<data>")
    measured.record(f"data_{damage}", section="Faults", order=40 if damage == "corrupt" else 41,
                    case="History file corrupt" if damage == "corrupt" else "History file from a future schema (99)",
                    required="quarantined, with a clear warning; the aggregator starts fresh",
                    measured=f"moved aside intact; log: \"{text[:170]}\"; heartbeat persistence mode sqlite "
                             "with the quarantined path; events and snapshots work")


def test_unusable_data_dir_runs_in_memory_and_says_so(isolated_env, endpoints, procs, client, measured):
    (isolated_env / "data").write_text("a file where the data directory should be\n")
    agg = procs.aggregator()
    wait_for(lambda: _persistence(client).get("mode") == "memory", timeout=20, client=client)
    reason = _persistence(client)["reason"]
    _works(client, endpoints, "in-memory")
    log = procs.output(agg)
    assert "kept in memory only" in log and "Traceback" not in log and agg.poll() is None
    cases = ["data directory path is a file"]
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root ignores permission bits
        cases.append("read-only directory (covered below)")
    measured.record("data_unwritable", section="Faults", order=42,
                    case="Data directory unusable (its path is a file" + (")" if len(cases) == 1 else "; read-only)"),
                    required="the aggregator keeps running in memory and says so",
                    measured=f"heartbeat persistence {{mode: memory, reason: \"{reason.replace(str(isolated_env), '<tmp>')[:120]}\"}}; "
                             "log warns \"history is kept in memory only\"; events and snapshots work")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_data_dir_runs_in_memory(isolated_env, endpoints, procs, client):
    data = isolated_env / "data"
    data.mkdir()
    data.chmod(0o500)
    try:
        agg = procs.aggregator()
        wait_for(lambda: _persistence(client).get("mode") == "memory", timeout=20, client=client)
        _works(client, endpoints, "read-only")
        assert agg.poll() is None
    finally:
        data.chmod(0o700)


# Disk full, portably enough: a file-size limit (RLIMIT_FSIZE) on the aggregator process
# makes its writes fail the way a full disk does (Python ignores SIGXFSZ, so write() fails).
FULL_DISK = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["aggregator", "run"]
runpy.run_module("aggregator", run_name="__main__")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_disk_full_mid_run_switches_to_memory(isolated_env, endpoints, procs, client, measured):
    (isolated_env / "config.toml").write_text("[aggregator]\nflush_interval = 1.0\n")
    limit = 160 * 1024
    agg = procs.start("-c", FULL_DISK.format(limit=limit), name="aggregator")
    wait_for(lambda: _persistence(client).get("mode") == "sqlite", timeout=20, client=client)
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pubs = [Publisher(sock, f"probe.fill{i}") for i in range(200)]
    rnd = random.Random(5)
    t0 = time.monotonic()
    try:
        def filling():
            for i, p in enumerate(pubs):  # 200 services, each with a fresh 1 s bucket every second
                p.send(f"timing.fill{i}", {"service": f"fill{i}", "endpoint": "/", "ok": True,
                                           "duration_ms": rnd.uniform(1, 1000)})
            return _persistence(client).get("mode") == "memory"
        wait_for(filling, timeout=90, client=client, every=0.05)
        switched = time.monotonic() - t0
        reason = _persistence(client)["reason"]
        _works(client, endpoints, "after-disk-full")
    finally:
        close(sock)
        ctx.term()
    log = procs.output(agg)
    assert "kept in memory only" in log and agg.poll() is None
    measured.record("data_disk_full", section="Faults", order=43,
                    case=f"Disk full mid-run (file-size limit {limit // 1024} KiB on the aggregator process)",
                    required="the aggregator keeps running in memory and says so",
                    measured=f"switched to memory {switched:.0f} s into the fill; heartbeat reason \""
                             f"{reason.replace(str(isolated_env), '<tmp>')[:120]}\"; events and snapshots work after")
