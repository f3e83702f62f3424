"""Persistence: round trip, kill -9 of a real aggregator in a loop, quarantine, memory fallback."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from aggregator.engine import Engine
from aggregator.settings import Settings
from aggregator.store import FILENAME, SCHEMA_VERSION, Store, StoreUnavailable
from bus.protocol import Publisher
from bus.sockets import close, new_context, pub_socket
from tests.conftest import wait_for
from tests.test_engine import Clock, beat, status, timing


def test_flush_and_restore_round_trip(tmp_path):
    clock = Clock()
    engine = Engine(clock, Settings(prices={"m": {"input": 1.0, "output": 2.0}}))
    store = Store(tmp_path)
    beat(engine)
    status(engine, "x", "connected", queue_depth=3)
    for i in range(400):
        timing(engine, "x", 50.0 + i % 50)
        if i % 40 == 0:
            timing(engine, "x", 0.0, ok=False, kind="timeout")
        clock.t += 1
        beat(engine)
        engine.tick()
        if i % 7 == 0:
            store.flush(engine)
    from bus.protocol import Message
    engine.ingest(Message("llm.usage", "addon", 1, 0.0, {"model": "m", "tokens_in": 10, "tokens_out": 5,
                                                          "latency_ms": 100.0}))
    store.flush(engine)
    before = engine.record("x")
    store.close()

    again = Engine(clock, engine.settings)
    store2 = Store(tmp_path)
    assert store2.restore(again) > 0
    after = again.record("x")
    assert after["state"] == "unknown" and "restarted" in after["error"]  # nobody watched meanwhile
    for window in ("5m", "1h", "24h"):
        b, a = before["windows"][window], after["windows"][window]
        for key in ("count", "p50_ms", "p95_ms", "p99_ms", "success_rate", "errors_by_kind", "up_s"):
            assert a[key] == pytest.approx(b[key]), (window, key)
    assert again.record("llm")["usage"]["by_model"]["m"]["cost_usd"] == pytest.approx(20e-6)
    h_again, h_before = again.history("1h")["services"]["x"], engine.history("1h")["services"]["x"]
    assert h_again["t0"] == h_before["t0"] and h_again["p95_ms"] == h_before["p95_ms"]
    # down time of the aggregator counts as unknown, never as up
    clock.t += 100
    again.tick()
    w = again.record("x")["windows"]["5m"]
    assert w["unknown_s"] == pytest.approx(100.0) and w["uptime"] == 1.0
    # retention bounds the file: the 1 s tier keeps 300 buckets however long we run
    store2.flush(again)
    rows = store2.db.execute("SELECT COUNT(*) FROM buckets WHERE tier='1s'").fetchone()[0]
    assert rows <= 2 * 301  # x and llm
    store2.close()


def test_future_schema_and_garbage_are_quarantined(tmp_path):
    path = tmp_path / FILENAME
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.quarantined is not None and store.quarantined.exists()
    assert "quarantined" in store.quarantined.name
    store.close()
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    store = Store(tmp_path)
    assert store.quarantined is not None and store.quarantined.read_bytes().startswith(b"this is not")
    store.flush(Engine(Clock()))  # a fresh, working file
    store.close()
    with pytest.raises(StoreUnavailable, match="cannot create the data directory"):
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        Store(blocker / "data")


def _aggregator_online(client, instance=None):
    return client.online and client.has_snapshot and client.aggregator.get("instance") not in (None, instance)


def test_corrupt_file_is_quarantined_by_a_real_aggregator(endpoints, procs, client, isolated_env):
    data = Path(os.environ["MD_HEALTH_DATA_DIR"])
    data.mkdir(parents=True)
    (data / FILENAME).write_bytes(b"\x00garbage" * 1000)
    agg = procs.aggregator()
    wait_for(lambda: _aggregator_online(client), timeout=20, client=client)
    persistence = client.aggregator["persistence"]
    assert persistence["mode"] == "sqlite" and "quarantined" in persistence["quarantined"]
    assert [p.name for p in data.iterdir() if "quarantined" in p.name]
    wait_for(lambda: "moved it aside" in procs.output(agg), timeout=10)
    assert "Traceback" not in procs.output(agg)


def test_unwritable_data_dir_keeps_running_in_memory(endpoints, procs, client, isolated_env):
    blocker = isolated_env / "not-a-dir"
    blocker.write_text("")
    agg = procs.aggregator(env={"MD_HEALTH_DATA_DIR": str(blocker / "data")})
    wait_for(lambda: _aggregator_online(client), timeout=20, client=client)
    persistence = client.aggregator["persistence"]
    assert persistence["mode"] == "memory" and "cannot create the data directory" in persistence["reason"]
    wait_for(lambda: "kept in memory only" in procs.output(agg), timeout=10)
    rid = client.export("json", "1s", "5m")  # still answering requests
    wait_for(lambda: rid in client.replies, timeout=10, client=client)
    assert client.replies[rid]["ok"] is True


def test_history_survives_kill_9_in_a_loop(endpoints, procs, client, isolated_env):
    """Events keep flowing while the aggregator is killed (-9) and restarted twice; after each
    restart, everything sent more than 10 s before the kill is still there. Two kills cover
    both cases: the first kills an aggregator that started on an empty data dir, the second
    one that restored the file a killed aggregator left and then added to it (a third kill
    would repeat the second case)."""
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.k")
    sent: list[float] = []
    instance = None

    def wait_subscribed():
        # a status round trip proves the new aggregator receives our events
        def seen():
            pub.send("heartbeat.probe.k", {"interval": 0.5, "services": ["k"]})
            pub.send("status.k", {"service": "k", "state": "connected", "details": {"queue_depth": 1}})
            return _aggregator_online(client, instance) and "k" in client.services
        wait_for(seen, timeout=30, client=client, every=0.1)  # a restart on a loaded 2-core machine

    def stored(window):
        client.request_snapshot()
        client.has_snapshot = False
        wait_for(lambda: client.has_snapshot, timeout=30, client=client)
        return client.services["k"]["windows"][window]["count"]

    try:
        kills: list[float] = []
        for cycle in range(3):
            agg = procs.aggregator()
            client.services.pop("k", None)
            wait_subscribed()
            instance = client.aggregator["instance"]
            if kills:
                must_have = sum(1 for t in sent if t < kills[-1] - 10.0)
                for window in ("5m", "1h", "24h"):
                    have = stored(window)
                    assert must_have <= have <= len(sent), (cycle, window, must_have, have, len(sent))
                assert client.services["k"]["stats"]["p50_ms"] == pytest.approx(42.0, rel=0.01)
            if cycle == 2:
                break
            end = time.monotonic() + 11.0
            while time.monotonic() < end:
                pub.send("timing.k", {"service": "k", "endpoint": "/", "duration_ms": 42.0, "ok": True})
                sent.append(time.time())
                if len(sent) % 10 == 0:
                    pub.send("heartbeat.probe.k", {"interval": 0.5, "services": ["k"]})
                client.poll(timeout_ms=20)
            agg.kill()  # SIGKILL / TerminateProcess: no flush, no goodbye
            agg.wait(10)
            kills.append(time.time())
    finally:
        close(pub.socket)
        ctx.term()


def test_damage_found_during_restore_is_quarantined_too(endpoints, procs, client, isolated_env):
    """A file that passes SQLite's quick check but holds nonsense rows is set aside at restore."""
    data = Path(os.environ["MD_HEALTH_DATA_DIR"])
    store = Store(data)
    store.db.execute("INSERT INTO services VALUES ('x', ?)", (b"\x93\x01\x02",))  # not a map: skipped
    store.db.execute("INSERT INTO services VALUES ('y', ?)", (__import__("msgpack").packb({"first_seen": "soon"}),))
    store.db.commit()
    store.close()
    agg = procs.aggregator()
    wait_for(lambda: _aggregator_online(client), timeout=20, client=client)
    assert client.aggregator["persistence"]["mode"] == "sqlite"
    assert "quarantined" in (client.aggregator["persistence"]["quarantined"] or "")
    assert "Traceback" not in procs.output(agg)


# The schema-1 file as the aggregator wrote it before the loading, sleeping and degraded shares.
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE buckets (
    service TEXT NOT NULL, tier TEXT NOT NULL, k INTEGER NOT NULL,
    ok INTEGER, fail INTEGER, sum REAL, mn REAL, mx REAL, up REAL, down REAL, unk REAL, qpeak REAL,
    sketch BLOB, errors TEXT,
    PRIMARY KEY (service, tier, k)) WITHOUT ROWID;
CREATE TABLE services (service TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE alerts (service TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (service, name));
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_new_shares_survive_a_restart_and_older_rows_without_them_still_load(tmp_path):
    import msgpack

    clock = Clock()
    engine = Engine(clock)
    beat(engine)
    for state, seconds in (("loading", 40), ("connected", 30), ("sleeping", 20)):
        for _ in range(seconds):
            clock.t += 1
            beat(engine)
            status(engine, "x", state)
            timing(engine, "x", 80.0)
            engine.tick()
    before = engine.record("x")["windows"]
    # this version's file keeps every share
    new_dir = tmp_path / "new"
    store = Store(new_dir)
    store.flush(engine)
    store.close()
    again = Engine(clock)
    Store(new_dir).restore(again)
    after = again.record("x")["windows"]
    for window in ("5m", "1h", "24h"):
        for key in ("up_s", "loading_s", "sleeping_s", "uptime", "count"):
            assert after[window][key] == pytest.approx(before[window][key], abs=0.01), (window, key)
        assert after[window]["loading_s"] == pytest.approx(40.0, abs=1.01)
    # a schema-1 file (rows without the three new columns) loads, and is upgraded in place
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    db = sqlite3.connect(old_dir / FILENAME)
    db.executescript(_SCHEMA_1)
    batch = engine.rows_to_persist({})
    db.executemany("INSERT INTO buckets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", [row[:14] for row in batch["buckets"]])
    db.executemany("INSERT INTO services VALUES (?,?)",
                   [(n, msgpack.packb(d, use_bin_type=True)) for n, d in batch["services"]])
    db.commit()
    db.close()
    old = Engine(clock)
    store = Store(old_dir)
    assert store.restore(old) > 0
    w = old.record("x")["windows"]["5m"]
    assert w["up_s"] == pytest.approx(before["5m"]["up_s"], abs=0.01) and w["count"] == before["5m"]["count"]
    assert w["loading_s"] == 0.0 and w["sleeping_s"] == 0.0 and w["degraded_s"] == 0.0  # none was kept then
    assert w["down_s"] == 0.0
    clock.t += 5
    store.flush(old)  # and it writes this version's rows into the upgraded file
    store.close()
    db = sqlite3.connect(old_dir / FILENAME)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.execute("SELECT count(*) FROM buckets WHERE loading IS NOT NULL").fetchone()[0] > 0
    db.close()
