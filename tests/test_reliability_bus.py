"""Bad input and load on the real bus: a real aggregator process, real sockets on loopback.

Garbage, oversized frames, wrong schema versions, a flood from one bad source, a subscriber
that reads nothing, a second aggregator on the same endpoints, and publishing while the
aggregator is dead (kill -9). Each test records what it measured for docs/reliability.md.

Run as a script, this module is the flood source used by the flood test:
    python -m tests.test_reliability_bus flood <events endpoint> <seconds> <rate>
"""
from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time

import zmq

from bus.client import MonitorClient
from bus.protocol import MAX_EVENT_BYTES, REJECT_KINDS, Publisher, Rejection, decode, encode
from bus.sockets import close, new_context, pub_socket
from tests.conftest import ROOT, wait_for
from tests.reliability import measured  # noqa: F401 - fixture


def _status(service: str, **details) -> dict:
    return {"service": service, "kind": "test", "state": "connected", "url": "", "required": False, "version": "",
            "capabilities": [], "error": "", "error_kind": "", "details": details, "interval": 1.0, "timeout": 1.0}


def raw_pub(ctx: zmq.Context, endpoint: str, hwm: int = 0) -> zmq.Socket:
    """A plain PUB that sends whatever bytes it is given (hwm 0: queue everything, drop nothing)."""
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    sock.sndhwm = hwm
    sock.connect(endpoint)
    return sock


def counters(client: MonitorClient) -> dict[str, int]:
    bus = client.aggregator.get("bus") or {}
    return {"accepted": bus.get("accepted", 0), **{k: (bus.get("rejected") or {}).get(k, 0) for k in REJECT_KINDS}}


def started(client: MonitorClient, pub: zmq.Socket, service: str, timeout: float = 20.0) -> None:
    """Send a good status until the aggregator shows it: the PUB is connected and subscribed."""
    frame = encode(f"status.{service}", f"probe.{service}", 1, _status(service))

    def seen():
        pub.send(frame)
        return service in client.services
    wait_for(seen, timeout=timeout, client=client, every=0.05)


def settle(client: MonitorClient, quiet: float = 1.5, timeout: float = 30.0) -> dict[str, int]:
    """Counters once they stop moving for `quiet` seconds (heartbeats carry them every 1 s)."""
    deadline = time.monotonic() + timeout
    last, since = counters(client), time.monotonic()
    while time.monotonic() < deadline:
        client.poll(timeout_ms=100)
        now = counters(client)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError("the aggregator's counters never settled")


def _garbage(n_seeds: int) -> list[bytes]:
    from tests.test_fuzz_protocol import variants  # the same mutators the offline fuzzer uses

    bases = [
        ("status.comfyui", _status("comfyui", queue_depth=3)),
        ("timing.comfyui", {"service": "comfyui", "endpoint": "/queue", "duration_ms": 3.5, "ok": True}),
        ("heartbeat.probe.x", {"interval": 1.0, "services": ["x"]}),
        ("llm.usage", {"model": "gpt-4o", "tokens_in": 10, "tokens_out": 5, "latency_ms": 100.0}),
        ("alert.comfyui.p95", {"service": "comfyui", "name": "p95", "active": True}),
        ("status.odd", {"service": "odd", "state": "bogus-state", "details": {"queue_depth": -1}}),
        ("timing.odd", {"service": "odd", "endpoint": "", "duration_ms": float("nan"), "ok": True}),
        ("heartbeat.probe.neg", {"interval": -5, "services": [1, None, "odd"]}),
    ]
    rnd = random.Random(7)
    frames = []
    for i in range(n_seeds):
        topic, body = bases[i % len(bases)]
        frames += variants(topic, f"fuzz{i % 5}", rnd.randrange(2**40), body, rnd, b"\x00bytes")
    return [f for f in frames if len(f) <= MAX_EVENT_BYTES]


def test_live_aggregator_survives_fuzzed_frames(endpoints, procs, client, measured):
    agg = procs.aggregator()
    frames = _garbage(160)
    expected = {"accepted": 0, **{k: 0 for k in REJECT_KINDS}}
    for f in frames:
        r = decode(f)
        expected[r.kind if isinstance(r, Rejection) else "accepted"] += 1
    ctx = new_context()
    pub = raw_pub(ctx, endpoints.events)
    try:
        started(client, pub, "fuzz-ok")
        before = settle(client)
        start = time.monotonic()
        for i, f in enumerate(frames):
            pub.send(f)
            if i % 2000 == 1999:
                client.poll(timeout_ms=1)
        after = settle(client)
        elapsed = time.monotonic() - start
        delta = {k: after[k] - before[k] for k in after}
        assert agg.poll() is None, procs.output(agg)[-2000:]
        assert delta == expected, (delta, expected)  # every frame counted, as accepted or by reject kind
        # ... and it still answers snapshots, and its state still renders as JSON.
        late = MonitorClient(endpoints, name="late")
        try:
            t0 = time.monotonic()
            wait_for(lambda: late.has_snapshot, timeout=10, client=late)
            answer = time.monotonic() - t0
        finally:
            late.close()
        out = subprocess.run([sys.executable, "-m", "aggregator", "status", "--json"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "fuzz-ok" in json.loads(out.stdout)["services"]
    finally:
        close(pub)
        ctx.term()
    rejected = {k: v for k, v in delta.items() if k != "accepted" and v}
    measured.record("fuzz_live", section="Bad input", order=20,
                    case="Live aggregator hammered with fuzzed frames",
                    required="stays up, counts every frame, answers snapshots",
                    measured=f"{len(frames):,} frames in {elapsed:.1f} s; counted exactly as decoded offline: accepted "
                             f"{delta['accepted']:,}, " + ", ".join(f"{k} {v:,}" for k, v in rejected.items())
                             + f"; snapshot answered in {answer * 1000:.0f} ms; `md-health status --json` exit 0",
                    frames=len(frames), **delta)


def test_oversized_frames_are_refused_by_maxmsgsize(endpoints, procs, client, measured):
    agg = procs.aggregator()
    ctx = new_context()
    big_pub, other = raw_pub(ctx, endpoints.events), raw_pub(ctx, endpoints.events)
    try:
        started(client, big_pub, "big-src")
        started(client, other, "other-src")
        before = settle(client)
        big = encode("status.big", "probe.big", 2, _status("big", blob="x" * (2 * MAX_EVENT_BYTES)))
        for _ in range(3):
            big_pub.send(big)
        # The well-behaved source carries on; the big one's peer was cut off by libzmq.
        for i in range(20):
            other.send(encode("status.other-src", "probe.other-src", 10 + i, _status("other-src", n=i)))
            client.poll(timeout_ms=50)
        wait_for(lambda: client.services.get("other-src", {}).get("details", {}).get("n") == 19, timeout=10,
                 client=client)
        after = settle(client)
        assert "big" not in client.services
        assert after["too_large"] == before["too_large"]  # never reached Python at all
        assert agg.poll() is None
        # The offender reconnects by itself; small frames from it are accepted again.
        t0 = time.monotonic()
        started(client, big_pub, "big-src-again")
        back = time.monotonic() - t0
    finally:
        close(big_pub, other)
        ctx.term()
    measured.record("oversized", section="Bad input", order=30,
                    case=f"Oversized frames ({2 * MAX_EVENT_BYTES >> 20} MiB, limit {MAX_EVENT_BYTES >> 20} MiB)",
                    required="refused by MAXMSGSIZE",
                    measured="dropped by libzmq before decoding (0 frames reached the decoder), the sender's "
                             "connection was cut and re-established by itself "
                             f"({back:.2f} s until its next small frame was accepted); other sources unaffected")


def test_wrong_schema_versions_counted_and_logged_once_per_kind(endpoints, procs, client, measured):
    agg = procs.aggregator()
    ctx = new_context()
    pub = raw_pub(ctx, endpoints.events)
    try:
        started(client, pub, "schema-ok")
        before = settle(client)
        sent = 0
        for src in ("probe.future", "probe.past"):
            for i in range(500):
                v = 2 if src == "probe.future" else 0
                frame = encode("status.x", src, i + 1, _status("x"))
                frame = frame.replace(b"\xa1v\x01", b"\xa1v" + bytes([v]), 1)
                assert isinstance(decode(frame), Rejection) and decode(frame).kind == "wrong_schema_version"
                pub.send(frame)
                sent += 1
        after = settle(client)
    finally:
        close(pub)
        ctx.term()
    assert after["wrong_schema_version"] - before["wrong_schema_version"] == sent
    # Logged by kind, not by the sender-chosen src: one line for both sources together.
    lines = sum(1 for line in procs.output(agg).splitlines() if "rejected a frame: wrong_schema_version" in line)
    assert lines == 1, procs.output(agg)[-3000:]
    measured.record("schema_version", section="Bad input", order=40,
                    case="Wrong schema versions (v=2 and v=0, 500 frames from each of two sources)",
                    required="counted, logged once per kind (then at most once a minute, with a summary)",
                    measured=f"{sent:,} counted as wrong_schema_version; log lines: {lines}")


# -- flood -------------------------------------------------------------------------------
def flood(endpoint: str, seconds: float, rate: float) -> None:
    """Send invalid frames at `rate` per second for `seconds`; print how many were sent."""
    ctx = new_context()
    sock = raw_pub(ctx, endpoint, hwm=10_000)
    junk = [encode("status.flood", "probe.flooder", i, _status("flood")).replace(b"\xa1v\x01", b"\xa1v\x07", 1)
            for i in range(50)] + [b"status.flood\x00\xc1\xc1\xc1", b"no-separator-at-all", b"\x00\x00"]
    time.sleep(0.5)  # let the connection and subscription settle
    sent, start, batch = 0, time.monotonic(), 1000
    while time.monotonic() - start < seconds:
        for i in range(batch):
            sock.send(junk[i % len(junk)])
        sent += batch
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}), flush=True)
    close(sock)
    ctx.term()


def _good_updates(client: MonitorClient, pub: Publisher, seconds: float, every: float = 0.1,
                  also=lambda: None) -> tuple[list[float], int, int]:
    """Publish `good` status updates carrying their send time; return observed latencies (s)."""
    latencies, sent, seen = [], 0, -1
    next_send = time.monotonic()
    end = next_send + seconds
    while time.monotonic() < end or (time.monotonic() < end + 5 and seen < sent - 1):
        if time.monotonic() >= next_send and time.monotonic() < end:
            pub.send("status.good", _status("good", n=sent, sent=time.time()))
            sent += 1
            next_send += every
        also()
        client.poll(max_messages=2000, timeout_ms=5)
        d = client.services.get("good", {}).get("details", {})
        if isinstance(d.get("n"), int) and d["n"] > seen:
            seen = d["n"]
            latencies.append(time.time() - d["sent"])
    return latencies, sent, seen


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else float("inf"))


def test_flood_from_one_source_does_not_starve_good_sources(endpoints, procs, client, measured):
    agg = procs.aggregator()
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pub = Publisher(sock, "probe.good")
    warm = raw_pub(ctx, endpoints.events)
    try:
        started(client, warm, "flood-warmup")
        wait_for(lambda: pub.send("status.good", _status("good", n=-1, sent=time.time())) and "good" in client.services,
                 timeout=20, client=client)
        before = settle(client, quiet=1.2)
        seconds = 6.0
        flooder = subprocess.Popen([sys.executable, "-m", "tests.test_reliability_bus", "flood", endpoints.events,
                                    str(seconds), "100000"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1.0)  # the flood is under way
        latencies, sent, seen = _good_updates(client, pub, seconds - 1.5)
        report = json.loads(flooder.communicate(timeout=60)[0].strip().splitlines()[-1])
        after = settle(client, quiet=1.2)
    finally:
        close(sock, warm)
        ctx.term()
    flood_counted = sum(after[k] - before[k] for k in REJECT_KINDS)
    send_rate = report["sent"] / report["seconds"]
    assert agg.poll() is None
    assert flood_counted > 20 * sent, (flood_counted, sent)  # it really was a flood
    assert seen == sent - 1, (seen, sent)  # the last good update got through
    assert len(latencies) >= sent * 0.5, (len(latencies), sent)
    p95 = _p95(latencies)
    assert p95 < 2.0, latencies  # generous: the machine is shared; typically well under 0.1 s
    measured.record("flood", section="Bad input", order=50,
                    case="Flood of invalid frames from one source (target 100k/s)",
                    required="does not starve the good sources' updates",
                    measured=f"flooder sent {send_rate / 1000:.0f}k frames/s ({report['sent']:,} in "
                             f"{report['seconds']:.1f} s), aggregator counted {flood_counted:,} rejections; the good "
                             f"source's {sent} updates: last one delivered, {len(latencies)} distinct snapshots seen, "
                             f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                             f"max {max(latencies) * 1000:.0f} ms",
                    flood_sent=report["sent"], flood_counted=flood_counted, p95_s=round(p95, 4))


CHURN_RATE = 300  # status updates per second


def test_slow_subscriber_does_not_slow_anyone(endpoints, procs, client, measured):
    agg = procs.aggregator()
    ctx = new_context()
    # A subscriber that never reads, with a tiny queue, and a requester that never reads replies.
    sleepy = ctx.socket(zmq.SUB)
    sleepy.linger, sleepy.rcvhwm = 0, 1
    sleepy.setsockopt(zmq.RCVBUF, 4096)
    sleepy.subscribe(b"")
    sleepy.connect(endpoints.snapshots)
    deaf = ctx.socket(zmq.DEALER)
    deaf.linger, deaf.sndhwm, deaf.rcvhwm = 0, 0, 1
    deaf.connect(endpoints.requests)
    sock = pub_socket(ctx, endpoints.events)
    churn = Publisher(sock, "probe.churn")
    pub = Publisher(pub_socket(ctx, endpoints.events), "probe.good")
    try:
        wait_for(lambda: churn.send("status.churn0", _status("churn0")) and "churn0" in client.services,
                 timeout=20, client=client)
        wait_for(lambda: pub.send("status.good", _status("good", n=-1, sent=time.time())) and "good" in client.services,
                 timeout=20, client=client)
        for i in range(2000):  # pile up unread replies on the deaf requester
            deaf.send(encode("request.snapshot", "deaf", 0, {"id": f"d{i}", "range": "5m"}))
        state = {"i": 0, "t0": time.monotonic()}

        def also():
            # 300 services each changing once a second (300 status/s, the soak's load class): a
            # steady stream of snapshot.* updates that the sleeper never reads.
            due = int((time.monotonic() - state["t0"]) * CHURN_RATE)
            while state["i"] < due:
                n = state["i"] = state["i"] + 1
                churn.send(f"status.churn{n % 300}", _status(f"churn{n % 300}", n=n))
        latencies, sent, seen = _good_updates(client, pub, 5.0, also=also)
        # Requests still answered promptly for the reading client.
        t0 = time.monotonic()
        rid = client.request_snapshot()
        wait_for(lambda: rid is None or client.has_snapshot, timeout=10, client=client)
        client.has_snapshot = False
        rid = client.request_snapshot()
        wait_for(lambda: client.has_snapshot, timeout=10, client=client)
        rtt = time.monotonic() - t0
        churned = state["i"]
        # The sleeper really is full: its socket has queued up to its high-water mark and
        # the aggregator has been dropping for it (PUB drops per subscriber, never blocks).
        stuck = sleepy.poll(0)
    finally:
        close(sleepy, deaf, sock, pub.socket)
        ctx.term()
    assert agg.poll() is None
    assert seen == sent - 1, (seen, sent)
    assert stuck
    p95 = _p95(latencies)
    assert p95 < 2.0, latencies
    measured.record("slow_subscriber", section="Load and soak", order=30,
                    case="A subscriber that reads nothing (+ a requester that never reads replies)",
                    required="never slows the aggregator or the other subscribers",
                    measured=f"with 300 services churning ({churned:,} status updates, each republished as a "
                             f"snapshot the sleeper never reads) and 2,000 unread replies: the "
                             f"reading client saw all {sent} good updates through the last, latency p50 "
                             f"{statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; snapshot "
                             f"request answered in {rtt * 1000:.0f} ms",
                    p95_s=round(p95, 4), rtt_s=round(rtt, 4))


def test_second_aggregator_refuses_with_a_clear_message(endpoints, procs, client, measured):
    first = procs.aggregator()
    wait_for(lambda: client.has_snapshot, timeout=20, client=client)
    t0 = time.monotonic()
    second = procs.aggregator()
    deadline = time.monotonic() + 30
    while second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    refused_in = time.monotonic() - t0
    out = procs.output(second)
    assert second.returncode == 3, out
    assert "already in use" in out and "another aggregator" in out and "Traceback" not in out
    assert first.poll() is None
    client.has_snapshot = False
    client.request_snapshot()
    wait_for(lambda: client.has_snapshot, timeout=10, client=client)  # the first one still serves
    measured.record("two_aggregators", section="Faults", order=60,
                    case="Two aggregators on the same endpoints",
                    required="the second refuses with a clear message, never steals the endpoint",
                    measured=f"second exits 3 after {refused_in:.1f} s (process start included): "
                             f"\"{out.strip().splitlines()[-1][:160]}\"; the first keeps answering")


def test_publishing_while_aggregator_is_dead_never_blocks_and_counts_drops(endpoints, procs, client, measured):
    """kill -9 the aggregator, keep publishing like a probe: sends never block, the local
    queue holds up to the high-water mark, every send beyond it is counted as dropped, and
    the queued messages reach the restarted aggregator."""
    from bus.sockets import EVENT_HWM

    agg = procs.aggregator()
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pub = Publisher(sock, "probe.dropper")
    try:
        wait_for(lambda: pub.send("status.dropper", _status("dropper")) and "dropper" in client.services,
                 timeout=20, client=client)
        agg.kill()  # kill -9 (TerminateProcess on Windows)
        agg.wait(10)
        total, slowest = 3 * EVENT_HWM, 0.0
        dropped_before = pub.dropped
        for i in range(total):
            t = time.perf_counter()
            pub.send("timing.dropper", {"service": "dropper", "endpoint": "/", "duration_ms": 1.0, "ok": True})
            slowest = max(slowest, time.perf_counter() - t)
        dropped = pub.dropped - dropped_before
        queued = total - dropped
        assert 0 < dropped < total and queued <= EVENT_HWM + 1000, (dropped, queued)
        assert slowest < 0.5
        procs.aggregator()
        t0 = time.monotonic()
        wait_for(lambda: client.online and counters(client)["accepted"] >= queued, timeout=30, client=client)
        delivered = counters(client)["accepted"]
        recovered = time.monotonic() - t0
    finally:
        close(sock)
        ctx.term()
    measured.record("probe_drops", section="Faults", order=15,
                    case="Aggregator killed (kill -9) while a probe keeps publishing",
                    required="probes never block; they drop at the high-water mark and count the drops",
                    measured=f"{total:,} sends into a dead aggregator, slowest send {slowest * 1e6:.0f} µs; "
                             f"{queued:,} held in the bounded queue (HWM {EVENT_HWM:,}), {dropped:,} counted as "
                             f"dropped; after restart the new aggregator received {delivered:,} of them in "
                             f"{recovered:.1f} s",
                    sent=total, dropped=dropped, queued=queued, delivered=delivered)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "flood":
        flood(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m tests.test_reliability_bus flood <events endpoint> <seconds> <rate>")
