"""Topics, the envelope, encoding and safe decoding.

Frame layout (one ZeroMQ frame per message, see docs/protocol.md):

    <topic as ASCII> 0x00 <msgpack map: {"v", "src", "seq", "ts", "body"}>

The topic is a prefix of the frame so a SUB socket can filter on it. One frame was
about 5x faster than multipart [topic, body] on this hardware (shared/REFERENCE.md).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import msgpack

SCHEMA_VERSION = 1
SEPARATOR = b"\x00"
MAX_TOPIC_BYTES = 128
# Events from probes are small; 1 MiB is generous and is also the SUB socket's MAXMSGSIZE.
MAX_EVENT_BYTES = 1 << 20
# Replies (full snapshot with history, exports) may be larger.
MAX_REPLY_BYTES = 64 << 20

# Service states published by probes (the seed story's four) ...
PROBE_STATES = ("connecting", "connected", "disconnected", "error")
# ... plus the one only the aggregator can know: the probe itself stopped reporting.
STATE_UNKNOWN = "unknown"
STATES = PROBE_STATES + (STATE_UNKNOWN,)

_NUMBER = (int, float)
_TEXT = (str,)
_BOOL = (bool,)
_MAP = (dict,)

# Required body fields per topic kind (the topic's first segment). Extra fields are
# allowed so the protocol can grow without a version bump; missing or mistyped required
# fields are rejected.
BODY_SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {"service": _TEXT, "state": _TEXT},
    "timing": {"service": _TEXT, "endpoint": _TEXT, "duration_ms": _NUMBER, "ok": _BOOL},
    "heartbeat": {"interval": _NUMBER},
    "snapshot": {"service": _TEXT},
    "alert": {"service": _TEXT, "name": _TEXT, "active": _BOOL},
    "control": {},
    "llm": {"model": _TEXT, "tokens_in": (int,), "tokens_out": (int,), "latency_ms": _NUMBER},
    "request": {},
    "reply": {"ok": _BOOL},
}

# Rejection kinds, in the order decode() checks them.
REJECT_KINDS = (
    "too_large",
    "bad_topic",
    "not_msgpack",
    "wrong_schema_version",
    "missing_field",
    "wrong_type",
)


@dataclass(slots=True, frozen=True)
class Message:
    topic: str
    src: str
    seq: int
    ts: float
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.topic.split(".", 1)[0]


@dataclass(slots=True, frozen=True)
class Rejection:
    kind: str  # one of REJECT_KINDS
    detail: str
    src: str = ""  # the claimed source when it could be read, for per-source logging

    def __bool__(self) -> bool:  # lets callers write `if msg := decode(f)` style checks
        return False


def encode(topic: str, src: str, seq: int, body: dict[str, Any], ts: float | None = None) -> bytes:
    """Encode one message as a single frame. Raises ValueError on a bad topic (our own bug)."""
    t = topic.encode("ascii")
    if not t or SEPARATOR in t or len(t) > MAX_TOPIC_BYTES:
        raise ValueError(f"bad topic {topic!r}")
    envelope = {
        "v": SCHEMA_VERSION,
        "src": src,
        "seq": seq,
        "ts": time.time() if ts is None else ts,
        "body": body,
    }
    return t + SEPARATOR + msgpack.packb(envelope, use_bin_type=True)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check(fields: dict[str, tuple[type, ...]], data: dict, where: str) -> tuple[str, str] | None:
    for name, types in fields.items():
        if name not in data:
            return "missing_field", f"{where} has no {name!r}"
        value = data[name]
        # bool is an int subclass; a number field must not accept True.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = "/".join(t.__name__ for t in types)
            return "wrong_type", f"{where}.{name} is {_type_name(value)}, expected {expected}"
        # NaN and infinity are floats too, but no duration, interval or timestamp: they
        # poison every statistic downstream (the live fuzzer crashed the engine with NaN).
        if isinstance(value, float) and not math.isfinite(value):
            return "wrong_type", f"{where}.{name} is {value}, expected a finite number"
    return None


_ENVELOPE = {"v": (int,), "src": _TEXT, "seq": (int,), "ts": _NUMBER, "body": _MAP}
_SCALARS = (str, int, float, bool, type(None))


_SERVICE_NAME = re.compile(r"[\x21-\x7e]{1,64}")


def valid_service(name: Any) -> bool:
    """A service name becomes a topic segment (`snapshot.<name>`, `alert.<name>.<alert>`), so
    it must be 1-64 printable ASCII characters without spaces. The live fuzzer showed why:
    a status for service 'comfy\\x00i' was accepted, and the aggregator then crashed
    publishing its snapshot. Config files should check names with this too."""
    return isinstance(name, str) and _SERVICE_NAME.fullmatch(name) is not None


def _not_plain(body: dict) -> str | None:
    """Where the body holds something other than JSON-like data, else None.

    msgpack also carries bytes, bytes map keys and extension objects (ExtType, Timestamp).
    They are inert, but JSON export, `md-health status --json` and the Blender panels
    cannot show them, so one bad publisher could break every consumer: refuse them here.
    Iterative, so deep nesting cannot hit the recursion limit.
    """
    stack: list = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"a map key is {_type_name(key)}"
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif not isinstance(value, _SCALARS):
            return f"a value is {_type_name(value)}"
    return None


def decode(frame: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Message | Rejection:
    """Decode one untrusted frame. Never raises: a bad frame becomes a Rejection."""
    try:
        if len(frame) > max_bytes:
            return Rejection("too_large", f"{len(frame)} bytes > limit {max_bytes}")
        cut = frame.find(SEPARATOR, 0, MAX_TOPIC_BYTES + 1)
        if cut <= 0:
            return Rejection("bad_topic", "no topic prefix before the 0x00 separator")
        try:
            topic = frame[:cut].decode("ascii")
        except UnicodeDecodeError:
            return Rejection("bad_topic", "topic is not ASCII")
        try:
            env = msgpack.unpackb(frame[cut + 1 :], raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises ValueError, UnicodeError, ExtraData...
            return Rejection("not_msgpack", f"{type(exc).__name__}: {exc}"[:200])
        if not isinstance(env, dict):
            return Rejection("wrong_type", f"envelope is {_type_name(env)}, expected map")
        src = env.get("src") if isinstance(env.get("src"), str) else ""
        v = env.get("v")
        if v != SCHEMA_VERSION or isinstance(v, bool):
            return Rejection("wrong_schema_version", f"schema version {v!r}, expected {SCHEMA_VERSION}", src[:64])
        bad = _check(_ENVELOPE, env, "envelope")
        if bad is None:
            schema = BODY_SCHEMAS.get(topic.split(".", 1)[0])
            if schema is not None:
                bad = _check(schema, env["body"], f"{topic} body")
        if bad is None and (what := _not_plain(env["body"])):
            bad = "wrong_type", f"{topic} body is not plain data: {what}"
        if bad is None and "service" in env["body"] and not valid_service(env["body"]["service"]):
            bad = "wrong_type", f"{topic} body.service {str(env['body']['service'])[:40]!r} is not a service name"
        if bad is not None:
            return Rejection(bad[0], bad[1], src[:64])
        if env["seq"] < 0:
            return Rejection("wrong_type", "envelope.seq is negative", src[:64])
        return Message(topic, env["src"], env["seq"], float(env["ts"]), env["body"])
    except Exception as exc:  # belt and braces: decoding must never raise to its caller
        return Rejection("not_msgpack", f"unexpected {type(exc).__name__}")


class RejectCounter:
    """Counts rejections by kind, and remembers which (source, kind) pairs were already logged."""

    def __init__(self) -> None:
        self.accepted = 0
        self.by_kind: dict[str, int] = {k: 0 for k in REJECT_KINDS}
        self._logged: set[tuple[str, str]] = set()

    def reject(self, rejection: Rejection) -> bool:
        """Count a rejection. Returns True the first time this (source, kind) is seen, so the
        caller logs once per source rather than once per message."""
        self.by_kind[rejection.kind] = self.by_kind.get(rejection.kind, 0) + 1
        key = (rejection.src, rejection.kind)
        if key in self._logged or len(self._logged) > 10_000:
            return False
        self._logged.add(key)
        return True

    @property
    def rejected(self) -> int:
        return sum(self.by_kind.values())

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.by_kind)}


class Publisher:
    """Stamps messages from one source with a monotonically increasing sequence number."""

    def __init__(self, socket, src: str) -> None:
        self.socket = socket
        self.src = src
        self.seq = 0
        self.dropped = 0  # messages refused by a full high-water mark

    def frame(self, topic: str, body: dict[str, Any]) -> bytes:
        self.seq += 1
        return encode(topic, self.src, self.seq, body)

    def send(self, topic: str, body: dict[str, Any]) -> bool:
        """Send without ever blocking. Returns False (and counts a drop) at the high-water mark."""
        import zmq

        try:
            self.socket.send(self.frame(topic, body), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            return False
