"""The aggregator shell: snapshot replies decode exactly and are never older than what was
already published, and a flood of requests from a client that never reads does not hold
back events for everyone else."""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from aggregator.server import Aggregator
from bus.protocol import MAX_REPLY_BYTES, Publisher, decode, encode
from bus.sockets import close, dealer_socket, new_context, pub_socket
from tests.conftest import wait_for


@pytest.fixture
def served(endpoints):
    """An aggregator running in a thread of this process, a zmq context for the test's own
    sockets, and a probe-side publisher; the aggregator must stop when asked."""
    stop = threading.Event()
    agg = Aggregator(endpoints, stop=stop)
    thread = threading.Thread(target=agg.run, daemon=True)
    thread.start()
    ctx = new_context()
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.f")
    try:
        yield agg, ctx, pub
    finally:
        stop.set()
        thread.join(10)
        close(pub.socket)
        ctx.term()
    assert not thread.is_alive()


def test_snapshot_replies_decode_and_a_request_flood_does_not_starve_events(endpoints, client, served):
    agg, ctx, pub = served
    deaf = ctx.socket(zmq.DEALER)
    deaf.sndhwm = 0  # queue every request: the flood must really reach the aggregator
    deaf.linger = 0
    deaf.connect(endpoints.requests)
    asker = dealer_socket(ctx, endpoints.requests)
    try:
        def many():  # many services, so every snapshot reply is big
            for i in range(200):
                pub.send(f"status.s{i}", {"service": f"s{i}", "state": "connected"})
            return len(client.services) >= 200 and client.has_snapshot
        wait_for(many, timeout=30, client=client, every=0.2)

        # Two requests with different ids get the same cached state, each with its own id.
        replies = {}
        for rid in ("a", "b"):
            asker.send(encode("request.snapshot", "t", 0, {"id": rid, "range": "5m"}))
        deadline = time.monotonic() + 10
        while len(replies) < 2 and time.monotonic() < deadline:
            if asker.poll(100):
                msg = decode(asker.recv(), max_bytes=MAX_REPLY_BYTES)
                assert msg, msg
                replies[msg.body["id"]] = msg.body
        assert set(replies) == {"a", "b"}
        for body in replies.values():
            assert body["ok"] is True and isinstance(body["seq"], int)
            assert len(body["state"]["services"]) == 200 and body["state"]["instance"] == agg.instance
            assert set(body) == {"ok", "seq", "state", "id"}

        for i in range(3000):  # a client that asks and asks and never reads
            deaf.send(encode("request.snapshot", "deaf", 0, {"id": f"d{i}", "range": "5m"}))
        time.sleep(0.5)  # let the flood arrive first
        t0 = time.monotonic()
        pub.send("status.s1", {"service": "s1", "state": "error", "error": "flood"})
        wait_for(lambda: client.services.get("s1", {}).get("state") == "error", timeout=30, client=client)
        # Events still flow while the flood is served. The aggregator runs in a thread of this
        # process, so it shares the GIL with the test's client: the bound keeps 3x over the 2 s
        # this once asserted (the tight figure is in tests/test_hostile.py, a separate process).
        assert time.monotonic() - t0 < 6.0
    finally:
        close(deaf, asker)


def test_a_snapshot_reply_is_never_older_than_an_update_already_published(endpoints, client, served):
    """Clone pattern: a late joiner subscribes, then asks. Updates published before it
    subscribed reach it only through the reply, so the reply must include them, even when
    another client's reply was built a moment earlier (the cached-reply bug CI caught: the
    example subscriber printed an empty state)."""
    _, ctx, pub = served
    asker = dealer_socket(ctx, endpoints.requests)

    def ask(rid: str) -> dict:
        asker.send(encode("request.snapshot", "t", 0, {"id": rid, "range": "5m"}))
        assert asker.poll(10_000), "no snapshot reply"
        msg = decode(asker.recv(), max_bytes=MAX_REPLY_BYTES)
        assert msg and msg.body["id"] == rid, msg
        return msg.body

    try:
        wait_for(lambda: client.has_snapshot, timeout=15, client=client)
        for round_ in range(5):
            before = ask(f"before-{round_}")  # builds (and may cache) a reply
            state = "connected" if round_ % 2 == 0 else "error"
            pub.send("status.s1", {"service": "s1", "state": state})
            wait_for(lambda: client.services.get("s1", {}).get("state") == state, timeout=10, client=client)
            published_seq = client._service_seq["s1"]
            after = ask(f"after-{round_}")  # at once: well inside any reuse window
            assert after["seq"] >= published_seq > before["seq"]
            assert after["state"]["services"]["s1"]["state"] == state
            assert set(after["state"]) == {"services", "alerts", "persistence", "windows", "instance", "history"}
            assert after["state"]["history"]["range"] == "5m"
    finally:
        close(asker)


def test_snapshot_points_asks_for_at_most_that_many_trailing_history_points(endpoints, client, served):
    """Contract C4: `points` in request.snapshot reaches the engine's history; a bad value is refused."""
    _, ctx, pub = served
    asker = dealer_socket(ctx, endpoints.requests)

    def ask(body: dict) -> dict:
        rid = f"r{time.monotonic_ns()}"
        asker.send(encode("request.snapshot", "t", 0, {"id": rid, **body}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if asker.poll(100):
                msg = decode(asker.recv(), max_bytes=MAX_REPLY_BYTES)
                assert msg, msg
                if msg.body["id"] == rid:
                    return msg.body
        raise AssertionError("no snapshot reply")

    try:
        def history_long():  # at least 5 one-second buckets for s1
            pub.send("timing.s1", {"service": "s1", "endpoint": "/", "duration_ms": 2.0, "ok": True})
            cols = ask({"range": "5m"})["state"]["history"]["services"].get("s1")
            return cols if cols and len(cols["p50_ms"]) >= 5 else None
        full = wait_for(history_long, timeout=60, every=0.5)
        short = ask({"range": "5m", "points": 3})["state"]["history"]
        cols = short["services"]["s1"]
        assert all(len(cols[k]) == 3 for k in ("p50_ms", "p95_ms", "success_rate", "up_ratio")), cols
        assert cols["t0"] >= full["t0"] and (cols["t0"] - full["t0"]) % short["step_s"] == 0
        for bad in (0, -1, "3", 2.5, True):
            body = ask({"range": "5m", "points": bad})
            assert body["ok"] is False and "points" in body["error"], body
    finally:
        close(asker)
