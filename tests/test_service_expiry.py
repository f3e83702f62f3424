"""Issue 11 item 7: a service that is not configured is forgotten after `forget_after`
without events: gone from the engine, the snapshot reply, the history file, its alerts and a
real MonitorClient, its end published as contract 1's delete. A configured one stays."""
from __future__ import annotations

import sqlite3
import threading
import time

import zmq

from aggregator.engine import Engine
from aggregator.server import Aggregator
from aggregator.settings import DEFAULT_ALERTS, Settings, from_config
from aggregator.store import FILENAME
from bus.config import load
from bus.protocol import MAX_REPLY_BYTES, Publisher, decode, encode
from bus.sockets import close, dealer_socket, new_context, pub_socket
from tests.conftest import wait_for
from tests.test_engine import Clock, beat, status, timing

FORGET = 3.0  # seconds, for the test; the default is a day


def rows_of(path, service: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return sum(db.execute(f"SELECT COUNT(*) FROM {t} WHERE service=?", (service,)).fetchone()[0]
                   for t in ("buckets", "services"))
    finally:
        db.close()


def test_an_unconfigured_service_expires_everywhere_and_a_configured_one_stays(endpoints, client, tmp_path):
    settings = Settings(forget_after=FORGET, flush_interval=0.5)
    assert "comfyui" in settings.configured and "adhoc" not in settings.configured
    stop = threading.Event()
    agg = Aggregator(endpoints, stop=stop, settings=settings)
    thread = threading.Thread(target=agg.run, daemon=True)
    thread.start()
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.f")
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"snapshot.adhoc")
    sub.connect(endpoints.snapshots)
    asker = dealer_socket(ctx, endpoints.requests)
    history = tmp_path / "data" / FILENAME

    def snapshot() -> dict:
        asker.send(encode("request.snapshot", "t", 0, {"id": "s", "range": "5m"}))
        assert asker.poll(20_000), "no snapshot reply"
        msg = decode(asker.recv(), max_bytes=MAX_REPLY_BYTES)
        assert msg, msg
        return msg.body["state"]

    sent = [0.0]

    def report() -> bool:
        sent[0] = time.monotonic()  # before the send: the aggregator sees these events later
        pub.send("heartbeat.probe.f", {"interval": 1.0, "services": ["adhoc", "comfyui"]})
        for name in ("adhoc", "comfyui"):
            pub.send(f"status.{name}", {"service": name, "state": "connected"})
        pub.send("timing.adhoc", {"service": "adhoc", "endpoint": "/", "duration_ms": 5.0, "ok": True})
        return True

    try:
        wait_for(lambda: report() and {"adhoc", "comfyui"} <= set(client.services), timeout=30, client=client,
                 every=0.2)
        wait_for(lambda: report() and history.exists() and rows_of(history, "adhoc") > 0, timeout=30, every=0.2)
        last = sent[0]  # the services go quiet

        deleted = None
        deadline = time.monotonic() + 30
        while deleted is None and time.monotonic() < deadline:
            if sub.poll(100):
                msg = decode(sub.recv())
                if msg and msg.body.get("deleted"):
                    deleted = msg
            client.poll()
        assert deleted is not None, "no delete published"
        quiet = time.monotonic() - last
        assert deleted.topic == "snapshot.adhoc"
        assert deleted.body["service"] == "adhoc" and deleted.body["deleted"] is True
        assert "configured" in deleted.body["reason"]
        assert quiet >= FORGET - 0.05, quiet  # not before its time

        wait_for(lambda: "adhoc" not in client.services, timeout=20, client=client)
        state = snapshot()
        assert "adhoc" not in state["services"] and "adhoc" not in state["history"]["services"]
        wait_for(lambda: rows_of(history, "adhoc") == 0, timeout=20)

        # The configured one is never forgotten, however long it is quiet.
        wait_for(lambda: time.monotonic() - last > 4 * FORGET, timeout=60, client=client, every=0.2)
        state = snapshot()
        assert state["services"]["comfyui"]["state"] == "unknown"  # its probe is silent, it stays listed
        assert "comfyui" in client.services and rows_of(history, "comfyui") > 0
        print(f"adhoc forgotten {quiet:.2f} s after its last event (forget_after {FORGET} s)")
    finally:
        stop.set()
        thread.join(10)
        close(pub.socket, sub, asker)
        ctx.term()
    assert not thread.is_alive()


def test_forgetting_ends_active_alerts_and_a_service_can_come_back():
    clock = Clock()
    rules = {"default": {**DEFAULT_ALERTS, "down_s": 2.0}}
    engine = Engine(clock, Settings(forget_after=60.0, alerts=rules))
    for _ in range(10):
        beat(engine, services=("adhoc",))
        status(engine, "adhoc", "disconnected")
        status(engine, "comfyui", "disconnected")
        clock.t += 1
        engine.tick()
    assert {a["service"] for a in engine.active_alerts()} == {"adhoc", "comfyui"}
    engine.pop_events()
    for _ in range(70):  # quiet
        clock.t += 1
        engine.tick()
    assert set(engine.services) == {"comfyui"}
    events = engine.pop_events()
    assert ("alert.adhoc.down", False) in [(t, b.get("active")) for t, b in events]
    assert [t for t, b in events if b.get("deleted")] == ["snapshot.adhoc"]
    assert [a["service"] for a in engine.active_alerts()] == ["comfyui"]
    timing(engine, "adhoc", 3.0)  # new events make it a new service
    assert engine.record("adhoc")["windows"]["5m"]["count"] == 1


def test_forget_after_and_configured_services_come_from_the_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[aggregator]\nforget_after = "2h"\n\n[services.gpu_box]\nurl = "http://10.0.0.5:8188"\n'
                    'flavour = "comfyui"\n')
    s = from_config(load(path))
    assert s.forget_after == 7200.0
    assert {"gpu_box", "comfyui", "llm"} <= s.configured
    assert Settings().forget_after == 86400.0
