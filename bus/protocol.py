"""Topics, the envelope, encoding and safe decoding.

Frame layout (one ZeroMQ frame per message, see docs/protocol.md):

    <topic as ASCII> 0x00 <msgpack map: {"v", "src", "seq", "ts", "body"}>

The topic is a prefix of the frame so a SUB socket can filter on it. One frame was
about 5x faster than multipart [topic, body] on this hardware (shared/REFERENCE.md).
"""
from __future__ import annotations

import math
import operator
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

SCHEMA_VERSION = 1
SEPARATOR = b"\x00"
MAX_TOPIC_BYTES = 128
# Seconds between a probe's heartbeats while it sends nothing else; a status counts as one.
# The aggregator declares a probe dead after 3 such intervals of silence.
PROBE_HEARTBEAT_INTERVAL = 2.0
# Events from probes are small; 1 MiB is generous and is also the SUB socket's MAXMSGSIZE.
MAX_EVENT_BYTES = 1 << 20
# Replies (full snapshot with history, exports) may be larger.
MAX_REPLY_BYTES = 64 << 20
# One status is one service's record, re-sent to every subscriber every second, so it is
# bounded well above what a real probe sends: a status is 0.5-3 KB (ComfyUI with four GPUs
# about 3 KB), `details` has 10-40 keys, and probes cut an error message to a few hundred
# characters. What is over a bound is refused (`too_large`), never stored.
MAX_STATUS_BYTES = 64 << 10
MAX_ERROR_CHARS = 4096
MAX_DETAILS_KEYS = 256

# Service states published by probes: the seed story's four, then "alive but not ready"
# (answers, but its model is still loading, or was unloaded by idle time and wakes on use) ...
PROBE_STATES = ("connecting", "connected", "disconnected", "error", "loading", "sleeping")
# ... plus the ones only the aggregator can know: the probe itself stopped reporting, and a
# connected service whose p95 or queue is over its alert threshold.
STATE_UNKNOWN = "unknown"
STATE_DEGRADED = "degraded"
STATES = PROBE_STATES + (STATE_UNKNOWN, STATE_DEGRADED)

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


class Message(NamedTuple):
    # A NamedTuple, not a frozen dataclass: it is built once per event on the ingest hot
    # path, and tuple construction costs a fraction of a frozen dataclass's __init__.
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


_MISSING = object()


def _check(fields: dict[str, tuple[type, ...]], data: dict, where: str) -> tuple[str, str] | None:
    """`where` is the envelope, or a topic whose body is checked."""
    for name, types in fields.items():
        value = data.get(name, _MISSING)
        # Exact type match: msgpack only yields exact built-in types, and it keeps bool
        # (an int subclass) out of number fields without a second test.
        kind = type(value)
        if kind not in types or kind is float and not math.isfinite(value):
            return _check_failure(name, value, types, where)  # the message is built only now
    return None


def _check_failure(name: str, value: Any, types: tuple[type, ...], where: str) -> tuple[str, str]:
    where = where if where == "envelope" else f"{where} body"
    if value is _MISSING:
        return "missing_field", f"{where} has no {name!r}"
    if type(value) not in types:
        expected = "/".join(t.__name__ for t in types)
        return "wrong_type", f"{where}.{name} is {_type_name(value)}, expected {expected}"
    # NaN and infinity are floats too, but no duration, interval or timestamp: they
    # poison every statistic downstream (the live fuzzer crashed the engine with NaN).
    return "wrong_type", f"{where}.{name} is {value}, expected a finite number"


_ENVELOPE = {"v": (int,), "src": _TEXT, "seq": (int,), "ts": _NUMBER, "body": _MAP}
_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))
_STR_ONLY = frozenset((str,))


_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def valid_service(name: Any) -> bool:
    """A service name becomes a topic segment (`snapshot.<name>`, `alert.<name>.<alert>`), so
    it is 1-64 letters, digits, `_` and `-`, not starting with `-`. No dot: in
    `alert.<service>.<name>` a dotted service could not be told from the alert's name. No
    space or NUL: the live fuzzer once had the aggregator crash publishing 'comfy\\x00i'.
    And no leading `=`, `+`, `-` or `@`, so a name is never a spreadsheet formula in a CSV
    export. Config files check names with this too."""
    if type(name) is str and name in _GOOD_NAMES:  # the same few names arrive thousands of times a second
        return True
    ok = isinstance(name, str) and _SERVICE_NAME.fullmatch(name) is not None
    if ok and len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return ok


_GOOD_NAMES: set[str] = set()


def _not_plain(body: dict) -> str | None:
    """Where the body holds something other than finite, JSON-like data, else None.

    msgpack also carries bytes, bytes map keys and extension objects (ExtType, Timestamp),
    and NaN or infinity at any depth. JSON export, `md-health status --json` and the Blender
    panels cannot show them (`JSON.parse` fails on NaN), so one bad publisher could break
    every consumer: refuse them here. Iterative, so deep nesting cannot hit the recursion limit.
    """
    scalars = _SCALAR_TYPES
    stack: list = [body]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return f"a map key is {_type_name(key)}"
                if type(item) not in scalars or type(item) is float:  # containers, floats and oddities
                    stack.append(item)
        elif kind is list:
            stack.extend(item for item in value if type(item) not in scalars or type(item) is float)
        elif kind is float:
            if not isfinite(value):
                return f"a number is {value}, not finite"
        elif kind not in scalars:
            return f"a value is {_type_name(value)}"
    return None


def decode(frame: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Message | Rejection:
    """Decode one untrusted frame. Never raises: a bad frame becomes a Rejection."""
    try:
        if len(frame) > max_bytes:
            return Rejection("too_large", f"{len(frame)} bytes > limit {max_bytes}")
        # partition, not find(sep, 0, limit): it is memchr too, and find()'s argument parsing
        # cost more than the search (callgrind); the payload copy is needed either way.
        head, sep, payload = frame.partition(SEPARATOR)
        if not head or not sep or len(head) > MAX_TOPIC_BYTES:
            return Rejection("bad_topic", "no topic prefix before the 0x00 separator")
        known = _TOPICS.get(head)  # the same few topics arrive thousands of times a second
        if known is None:
            try:
                topic = head.decode("ascii")
            except UnicodeDecodeError:
                return Rejection("bad_topic", "topic is not ASCII")
            known = (topic, BODY_SCHEMAS.get(topic.partition(".")[0]))
            if len(_TOPICS) < 4096:
                _TOPICS[head] = known
        topic, schema = known
        try:
            # Bytes and extension objects (Timestamp included) are never valid here: msgpack
            # refuses any of non-zero length while unpacking, at C speed.
            env = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
        except ValueError as exc:
            if "max_bin_len" in str(exc) or "max_ext_len" in str(exc):
                return Rejection("wrong_type", f"{topic} is not plain data: it holds bytes or a msgpack extension",
                                 _claimed_src(payload))
            return Rejection("not_msgpack", f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # msgpack also raises UnicodeError, ExtraData, ...
            return Rejection("not_msgpack", f"{type(exc).__name__}: {exc}"[:200])
        if type(env) is not dict:
            return Rejection("wrong_type", f"envelope is {_type_name(env)}, expected map")
        # Fast path: one C call fetches the envelope and one expression accepts it; anything
        # else goes through the slow checks, which say exactly what is wrong.
        try:
            v, src, seq, ts, body = _envelope_fields(env)
        except KeyError:
            return _envelope_rejection(env)
        if ((type(v), type(src), type(seq), type(ts), type(body)) not in _ENVELOPE_TYPES
                or v != SCHEMA_VERSION or seq < 0 or not isfinite(ts)):
            return _envelope_rejection(env)
        if schema and (bad := _check(schema, body, topic)):  # the body's required fields
            return Rejection(bad[0], bad[1], src[:64])
        # Only zero-length bytes and extensions get past the unpack limits, and a non-finite
        # float is a float like any other to msgpack; walk the body for them just when such
        # bytes occur at all (rare, and a false alarm costs one walk).
        if (((0x7F in frame or 0xFF in frame) and _non_finite_hint(frame)) or _has_zero_length_header(frame)) \
                and (what := _not_plain(body)):
            return Rejection("wrong_type", f"{topic} body is not plain data: {what}", src[:64])
        # Over MAX_DETAILS_KEYS keys or MAX_ERROR_CHARS characters takes more than 512 bytes,
        # so the common small status skips the call.
        if schema is _STATUS and len(frame) > 512 and (what := _status_over_cap(frame, body)):
            return Rejection("too_large", f"{topic}: {what}", src[:64])
        service = body.get("service")
        if service is not None and not valid_service(service):
            return Rejection("wrong_type", f"{topic} body.service {str(service)[:40]!r} is not a service name",
                             src[:64])
        return _new_message(Message, (topic, src, seq, float(ts), body))
    except Exception as exc:  # belt and braces: decoding must never raise to its caller
        return Rejection("not_msgpack", f"unexpected {type(exc).__name__}")


_TOPICS: dict[bytes, tuple[str, dict | None]] = {}  # topic bytes -> (topic, body schema)
_STATUS = BODY_SCHEMAS["status"]
_envelope_fields = operator.itemgetter("v", "src", "seq", "ts", "body")
_ENVELOPE_TYPES = frozenset((int, str, int, ts, dict) for ts in (int, float))  # v, src, seq, ts, body
isfinite = math.isfinite


# bin8/16/32 and ext8/16/32 headers of length zero: a lead byte, then 1, 2 or 4 zero bytes.
_ZERO_LENGTH_HEADERS = tuple((lead, bytes(n)) for lead, n in
                             ((0xC4, 1), (0xC7, 1), (0xC5, 2), (0xC8, 2), (0xC6, 4), (0xC9, 4)))


def _non_finite_hint(frame: bytes) -> bool:
    """Whether a msgpack float32 (0xCA) or float64 (0xCB) may be NaN or infinite: its
    exponent is all ones, so the byte after the lead is 0x7F or 0xFF. Those bytes are looked
    for with memchr (`in` with an int): a two-byte substring search cost 0.25-0.5 us a frame,
    more than the rest of decoding a timing event; 0x7F and 0xFF are rare in probe traffic,
    so the inner loop seldom runs."""
    for second in (0x7F, 0xFF):
        if second not in frame:
            continue
        i = frame.find(second, 1)
        while i > 0:
            if frame[i - 1] in _FLOAT_LEADS:
                return True
            i = frame.find(second, i + 1)
    return False


_FLOAT_LEADS = (0xCA, 0xCB)


def _status_over_cap(frame: bytes, body: dict) -> str | None:
    """Where a status is bigger than one service's record may be (MAX_STATUS_BYTES & co)."""
    if len(frame) > MAX_STATUS_BYTES:
        return f"{len(frame)} bytes > the {MAX_STATUS_BYTES} a status may have"
    error = body.get("error")
    if type(error) is str and len(error) > MAX_ERROR_CHARS:
        return f"error is {len(error)} characters > {MAX_ERROR_CHARS}"
    details = body.get("details")
    if type(details) is dict and len(details) > MAX_DETAILS_KEYS:
        return f"details has {len(details)} keys > {MAX_DETAILS_KEYS}"
    return None


def _has_zero_length_header(frame: bytes) -> bool:
    """Whether the frame holds a zero-length bin or ext header (or bytes that look like one).

    Lead bytes are looked for with memchr (`in` with an int, then `find`): about 0.01 ns a
    byte, against 4.5 ns a byte for a regex alternation of the six headers, which made this
    the costliest step of decoding a 500-byte status (bench/profile). `in` first, because
    find()'s argument parsing costs more than the search (callgrind); lead bytes are rare,
    so the inner loop seldom runs."""
    for lead, zeros in _ZERO_LENGTH_HEADERS:
        if lead not in frame:
            continue
        i = frame.find(lead)
        while i >= 0:
            if frame.startswith(zeros, i + 1):
                return True
            i = frame.find(lead, i + 1)
    return False


def _claimed_src(payload) -> str:
    """The envelope's src for per-source logging, read leniently from a refused payload."""
    if len(payload) > 65536:  # a flood of big bad frames must not be unpacked twice
        return ""
    try:
        env = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        src = env.get("src") if isinstance(env, dict) else None
        return src[:64] if isinstance(src, str) else ""
    except Exception:
        return ""


_new_message = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def _envelope_rejection(env: dict) -> Rejection:
    src = env.get("src") if isinstance(env.get("src"), str) else ""
    v = env.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:
        return Rejection("wrong_schema_version", f"schema version {v!r}, expected {SCHEMA_VERSION}", src[:64])
    bad = _check(_ENVELOPE, env, "envelope")
    if bad is not None:
        return Rejection(bad[0], bad[1], src[:64])
    return Rejection("wrong_type", "envelope.seq is negative", src[:64])


class RejectCounter:
    """Counts rejections by kind, and limits how often each kind is logged.

    Logging is keyed by kind, never by the sender-chosen `src`: a sender that changes its
    src on every frame must not add a log line per frame (issue 14: 3000 sources added 3000
    lines). A kind is logged at most once per `every` seconds (monotonic); the ones not
    logged are counted and reported by `summary()`, which the owner calls periodically."""

    def __init__(self, every: float = 60.0, clock=time.monotonic) -> None:
        self.accepted = 0
        self.by_kind: dict[str, int] = {k: 0 for k in REJECT_KINDS}
        self.every = every
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}  # kind -> not logged since the last summary

    def reject(self, rejection: Rejection) -> bool:
        """Count a rejection. Returns True when the caller should log it: the first of its
        kind, then at most once per `every` seconds."""
        kind = rejection.kind
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        now = self._clock()
        last = self._logged_at.get(kind)
        if last is not None and now - last < self.every:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return False
        self._logged_at[kind] = now
        return True

    def summary(self) -> str | None:
        """One line saying how many rejections were not logged since the last call (None if none)."""
        if not self.suppressed:
            return None
        parts = ", ".join(f"{k} {n:,}" for k, n in sorted(self.suppressed.items()))
        self.suppressed = {}
        return f"{parts} (not logged one by one; each kind is logged at most once per {self.every:g} s)"

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
