"""Property-based fuzzing of the bus decoder: >= 100k generated and mutated frames.

Each hypothesis example draws one well-formed message (any topic kind, random extra body
fields) plus a seed for the byte mutations, then derives a batch of frames from it: the frame
itself, structural variants (wrong version, missing or mistyped fields, non-map envelope,
oversized) and byte-level mutants (flips, cuts, splices, insertions, random bytes). Every
frame goes through `decode`, which must return, never raise; each result is counted as
accepted or rejected by kind, and an accepted message must be plain data that re-encodes.
"""
from __future__ import annotations

import json
import math
import random
import time

import msgpack
from hypothesis import HealthCheck, given, settings, strategies as st

from bus.protocol import (BODY_SCHEMAS, MAX_EVENT_BYTES, MAX_TOPIC_BYTES, REJECT_KINDS, SCHEMA_VERSION,
                          Message, Rejection, decode, encode)
from tests.reliability import measured  # noqa: F401 - fixture

FRAMES_PER_EXAMPLE = 128
EXAMPLES = 850  # 850 * 128 = 108,800 frames, plus the hand-made corner cases

_SAMPLE_VALUE = {str: "x", int: 1, float: 1.5, bool: True, dict: {}}

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NAMES = st.sampled_from(["comfyui", "wan2gp", "rvc", "llm", "a.b-c_d", "x" * 64])
hostile = st.binary(max_size=8) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(sorted(BODY_SCHEMAS) + ["unknownkind"]))
    topic = kind + draw(st.sampled_from(["", ".comfyui", ".probe.llm", "." + "x" * 100]))
    body = {}
    for field, types in BODY_SCHEMAS.get(kind, {}).items():
        t = draw(st.sampled_from(types))
        body[field] = (draw(NAMES | st.text(max_size=12)) if field == "service"
                       else draw(st.text(max_size=12)) if t is str else draw(st.booleans()) if t is bool
                       else draw(st.integers(-(2**63), 2**63 - 1)) if t is int
                       else draw(st.floats()) if t is float else _SAMPLE_VALUE[t])
    body.update(draw(st.dictionaries(st.text(max_size=10), plain, max_size=5)))
    src = draw(st.text(max_size=30))
    seq = draw(st.integers(0, 2**63))
    return topic[:MAX_TOPIC_BYTES], src, seq, body


def _pack(env) -> bytes:
    return msgpack.packb(env, use_bin_type=True)


def variants(topic: str, src: str, seq: int, body: dict, rnd: random.Random, evil) -> list[bytes]:
    """The batch of frames derived from one message."""
    good = encode(topic, src, seq, body, ts=1.7e9)
    t = topic.encode()
    env = {"v": SCHEMA_VERSION, "src": src, "seq": seq, "ts": 1.7e9, "body": body}
    out = [good]
    # Structural variants: each should be rejected with a specific kind.
    for v in (0, 2, 99, -1, "1", None, True, 1.0):
        out.append(t + b"\x00" + _pack({**env, "v": v}))
    for x in (float("nan"), float("inf"), -float("inf")):
        out.append(t + b"\x00" + _pack({**env, "ts": x}))
        out.append(t + b"\x00" + _pack({**env, "body": {**body, **{f: x for f, ty in
                                                                    BODY_SCHEMAS.get(topic.split(".", 1)[0], {}).items()
                                                                    if float in ty}}}))
    for field in env:
        out.append(t + b"\x00" + _pack({k: x for k, x in env.items() if k != field}))
        out.append(t + b"\x00" + _pack({**env, field: rnd.choice([[], {}, "s", b"b", 3.5, None, -5, True])}))
    for field in BODY_SCHEMAS.get(topic.split(".", 1)[0], {}):
        out.append(t + b"\x00" + _pack({**env, "body": {k: x for k, x in body.items() if k != field}}))
    out.append(t + b"\x00" + _pack({**env, "body": {**body, "details": evil}}))  # bytes / ext in the body
    out.append(t + b"\x00" + _pack([env]))
    out.append(b"\x00" + good)
    out.append(good.replace(b"\x00", b"", 1))
    out.append(("t\u00e9pic".encode() + b"\x00" + good.split(b"\x00", 1)[1]))
    out.append(good + good)
    out.append(good + b"\xc1")
    # Byte-level mutants.
    while len(out) < FRAMES_PER_EXAMPLE - 2:
        b = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            op = rnd.randrange(6)
            i = rnd.randrange(len(b)) if b else 0
            if op == 0 and b:
                b[i] ^= 1 << rnd.randrange(8)
            elif op == 1:
                del b[i:]
            elif op == 2:
                b[i:i] = rnd.randbytes(rnd.randint(1, 16))
            elif op == 3 and b:
                b[i] = rnd.choice([0x00, 0xC1, 0xDC, 0xDE, 0xC4, 0xD9, 0xFF, 0x80, 0x90])
            elif op == 4:
                del b[i:i + rnd.randint(1, 8)]
            else:
                j = rnd.randrange(len(good))
                b[i:i] = good[j:j + rnd.randint(1, 32)]
        out.append(bytes(b))
    out.append(rnd.randbytes(rnd.randint(0, 300)))
    out.append(t + b"\x00" + rnd.randbytes(rnd.randint(0, 300)))
    return out


def _is_plain(value) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                return False
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            return False
    return True


def check(frame: bytes, counts: dict[str, int]) -> None:
    result = decode(frame)  # must never raise: an exception here fails the test
    if isinstance(result, Rejection):
        assert not result
        assert result.kind in REJECT_KINDS, result
        assert len(result.detail) <= 300
        counts[result.kind] += 1
        return
    assert isinstance(result, Message), result
    assert result.topic.isascii() and "\x00" not in result.topic and 0 < len(result.topic) <= MAX_TOPIC_BYTES
    assert isinstance(result.body, dict) and isinstance(result.seq, int) and result.seq >= 0
    # Accepted data is plain (no bytes, no msgpack extension objects), so every later
    # consumer (JSON export, `md-health status --json`, the Blender panels) can handle it.
    assert _is_plain(result.body) and isinstance(result.src, str), result
    json.dumps(result.body, allow_nan=False)  # strict JSON: no NaN or infinity at any depth (issue 14)
    # A service name must work as a topic segment: the aggregator publishes snapshot.<service>
    # (a NUL in a name once crashed it there).
    if "service" in result.body:
        encode(f"snapshot.{result.body['service']}", "aggregator", 1, {})
        encode(f"alert.{result.body['service']}.p95_high", "aggregator", 1, {})
    # Schema number fields are finite: NaN/inf in a duration once crashed the live aggregator.
    assert math.isfinite(result.ts)
    for field, types in BODY_SCHEMAS.get(result.kind, {}).items():
        value = result.body[field]
        assert isinstance(value, types) and not (isinstance(value, float) and not math.isfinite(value)), result
    again = decode(encode(result.topic, result.src, result.seq, result.body, ts=result.ts))
    assert isinstance(again, Message) and _pack(again.body) == _pack(result.body)  # bytes: NaN-safe
    counts["accepted"] += 1


def test_decoder_fuzz_over_100k_frames(measured):
    counts = {"accepted": 0, **{k: 0 for k in REJECT_KINDS}}
    start = time.perf_counter()

    # Corner cases first: empty, huge, topic limits, deep nesting.
    for frame in (b"", b"\x00", b"a\x00", b"a" * (MAX_TOPIC_BYTES + 1) + b"\x00" + _pack({}),
                  b"t\x00" + b"\x91" * 5000, b"t\x00" + b"\xdf\xff\xff\xff\xff",
                  b"x" * (MAX_EVENT_BYTES + 1), encode("status.a", "s", 1, {"service": "a", "state": "connected"})):
        check(frame, counts)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    # A plain Random seeded by hypothesis: hypothesis' own Random records every call,
    # which made the byte mutations ~20x slower.
    @given(messages(), st.integers(0, 2**32), hostile)
    def fuzz(message, seed, evil):
        for frame in variants(*message, random.Random(seed), evil):
            check(frame, counts)

    fuzz()
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    assert total >= 100_000, counts
    assert counts["accepted"] >= EXAMPLES // 2  # most well-formed originals (random service names may not be)
    for kind in REJECT_KINDS:
        assert counts[kind] > 0, f"no frame exercised rejection kind {kind}: {counts}"
    rejected = {k: v for k, v in counts.items() if k != "accepted"}
    measured.record(
        "fuzz_decoder", section="Bad input", order=10,
        case="Fuzzed bus decoder (hypothesis: generated + mutated frames)",
        required=">= 100k frames, nothing raises, every frame counted accepted or rejected by kind",
        measured=f"{total:,} frames in {elapsed:.1f} s, 0 exceptions; accepted {counts['accepted']:,}; rejected "
                 + ", ".join(f"{k} {v:,}" for k, v in rejected.items()),
        frames=total, seconds=round(elapsed, 2), **counts)
