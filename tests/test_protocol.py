"""The wire protocol: round trip, and every class of bad frame counted and survived."""
from __future__ import annotations

import msgpack
import pytest
import zmq

from bus.protocol import (
    MAX_EVENT_BYTES, REJECT_KINDS, SCHEMA_VERSION, Message, Publisher, RejectCounter, Rejection, decode, encode,
)
from bus.sockets import Endpoints, close, drain, new_context, pub_socket, sub_socket
from tests.conftest import wait_for


def _frame(topic: str, envelope) -> bytes:
    return topic.encode() + b"\x00" + msgpack.packb(envelope)


def test_round_trip_keeps_every_field():
    body = {"service": "comfyui", "state": "connected", "details": {"devices": [{"vram_total": 1 << 34}]}}
    msg = decode(encode("status.comfyui", "probe.comfyui", 7, body, ts=1234.5))
    assert msg == Message("status.comfyui", "probe.comfyui", 7, 1234.5, body)
    assert msg.kind == "status"


GOOD_ENV = {"v": SCHEMA_VERSION, "src": "probe.x", "seq": 1, "ts": 1.0,
            "body": {"service": "x", "endpoint": "/", "duration_ms": 1.5, "ok": True}}


@pytest.mark.parametrize("frame, kind", [
    (b"x" * (MAX_EVENT_BYTES + 1), "too_large"),
    (b"no separator at all", "bad_topic"),
    (b"\x00" + msgpack.packb(GOOD_ENV), "bad_topic"),
    ("stätus".encode() + b"\x00" + msgpack.packb(GOOD_ENV), "bad_topic"),
    (b"timing.x\x00\xc1\xc1garbage", "not_msgpack"),
    (b"timing.x\x00" + msgpack.packb(GOOD_ENV) + b"trailing", "not_msgpack"),
    (_frame("timing.x", [1, 2, 3]), "wrong_type"),
    (_frame("timing.x", {**GOOD_ENV, "v": 99}), "wrong_schema_version"),
    (_frame("timing.x", {**GOOD_ENV, "v": True}), "wrong_schema_version"),
    (_frame("timing.x", {k: v for k, v in GOOD_ENV.items() if k != "seq"}), "missing_field"),
    (_frame("timing.x", {**GOOD_ENV, "body": {"service": "x"}}), "missing_field"),
    (_frame("timing.x", {**GOOD_ENV, "seq": "1"}), "wrong_type"),
    (_frame("timing.x", {**GOOD_ENV, "seq": -5}), "wrong_type"),
    (_frame("timing.x", {**GOOD_ENV, "body": {**GOOD_ENV["body"], "duration_ms": True}}), "wrong_type"),
    (_frame("timing.x", {**GOOD_ENV, "body": "not a map"}), "wrong_type"),
])
def test_bad_frames_become_typed_rejections(frame, kind):
    result = decode(frame)
    assert isinstance(result, Rejection), result
    assert result.kind == kind
    assert kind in REJECT_KINDS
    assert not result  # rejections are falsy


def test_a_good_frame_next_to_bad_ones_still_decodes():
    assert isinstance(decode(_frame("timing.x", GOOD_ENV)), Message)


def test_counter_logs_once_per_kind_whatever_the_source_then_sums_up():
    now = [100.0]
    counter = RejectCounter(every=60.0, clock=lambda: now[0])
    # Every frame claims another src: logging must not follow the sender's choice.
    bad = [decode(_frame("timing.x", {**GOOD_ENV, "v": 2, "src": f"forged-{i}"})) for i in range(100)]
    assert counter.reject(bad[0]) is True
    assert all(counter.reject(b) is False for b in bad[1:])
    assert counter.by_kind["wrong_schema_version"] == 100
    assert counter.rejected == 100
    assert "wrong_schema_version 99" in counter.summary()
    assert counter.summary() is None  # nothing new since
    now[0] += 60.0
    assert counter.reject(bad[5]) is True  # once per interval again


def test_non_finite_numbers_are_refused_at_any_depth():
    import math
    import msgpack

    for body in ({"details": {"a": math.nan, "queue_depth": math.inf}}, {"details": {"x": [1, {"y": -math.inf}]}},
                 {"extra": math.nan}):
        frame = _frame("status.x", {**GOOD_ENV, "body": {"service": "x", "state": "connected", **body}})
        result = decode(frame)
        assert isinstance(result, Rejection) and result.kind == "wrong_type" and "finite" in result.detail, result
    # float32 too (another language's encoder may send single floats).
    env = {**GOOD_ENV, "body": {"service": "x", "state": "connected", "d": {"x": math.nan}}}
    assert not decode(b"status.x\x00" + msgpack.packb(env, use_single_float=True))
    big = decode(_frame("status.x", {**GOOD_ENV, "body": {"service": "x", "state": "connected", "d": [1e308, -1e308]}}))
    assert isinstance(big, Message)  # huge but finite is fine


def test_status_over_a_record_cap_is_refused():
    from bus.protocol import MAX_DETAILS_KEYS, MAX_ERROR_CHARS, MAX_STATUS_BYTES

    for extra in ({"error": "e" * (MAX_ERROR_CHARS + 1)}, {"details": {str(i): 0 for i in range(MAX_DETAILS_KEYS + 1)}},
                  {"details": {"blob": "x" * MAX_STATUS_BYTES}}):
        result = decode(_frame("status.x", {**GOOD_ENV, "body": {"service": "x", "state": "connected", **extra}}))
        assert isinstance(result, Rejection) and result.kind == "too_large", result
    ok = {"error": "e" * MAX_ERROR_CHARS, "details": {str(i): 0 for i in range(MAX_DETAILS_KEYS)}}
    assert isinstance(decode(_frame("status.x", {**GOOD_ENV, "body": {"service": "x", "state": "connected", **ok}})),
                      Message)


def test_service_names_are_topic_segments_without_dots_or_formulas():
    from bus.protocol import valid_service

    for good in ("comfyui", "wan2gp", "llm", "my_box-2", "A" * 64, "_x"):
        assert valid_service(good), good
    for bad in ("a.b", "a b", "=HYPERLINK(1)", "+1", "-x", "@x", "", "x" * 65, "comfy\x00i", "é", None, 3):
        assert not valid_service(bad), bad


def test_publisher_sequence_is_monotonic_per_source_over_real_sockets(endpoints: Endpoints):
    ctx = new_context()
    sub = sub_socket(ctx, endpoints.events, prefixes=("status.",), bind=True)
    pub = pub_socket(ctx, endpoints.events)
    publisher = Publisher(pub, "probe.t")
    received: list[Message] = []
    try:
        def got_some():
            publisher.send("status.t", {"service": "t", "state": "connected"})
            received.extend(decode(f) for f in drain(sub, 100, 0.01))
            return len(received) >= 20
        wait_for(got_some, timeout=10)
        seqs = [m.seq for m in received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(m.src == "probe.t" for m in received)
    finally:
        close(sub, pub)
        ctx.term()


def test_oversized_frame_is_refused_by_maxmsgsize(endpoints: Endpoints):
    """libzmq drops a peer whose message exceeds MAXMSGSIZE; Python never sees the frame."""
    ctx = new_context()
    sub = sub_socket(ctx, endpoints.events, bind=True)
    raw = ctx.socket(zmq.PUB)  # a hostile peer without our limits
    raw.linger = 0
    raw.connect(endpoints.events)
    good = pub_socket(ctx, endpoints.events)
    try:
        big = b"status.x\x00" + b"A" * (MAX_EVENT_BYTES + 10)
        ok_frame = encode("status.x", "probe.good", 1, {"service": "x", "state": "connected"})
        seen: list[bytes] = []

        def good_arrives():
            raw.send(big)
            good.send(ok_frame)
            seen.extend(drain(sub, 100, 0.01))
            return any(f == ok_frame for f in seen)
        wait_for(good_arrives, timeout=10)
        assert all(len(f) <= MAX_EVENT_BYTES for f in seen)
    finally:
        close(sub, raw, good)
        ctx.term()
