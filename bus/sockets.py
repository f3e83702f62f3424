"""Socket helpers: loopback endpoints, safe options, non-blocking drain, closing that never hangs.

Who binds what (one aggregator, many probes and clients):

    events     tcp://127.0.0.1:5581  aggregator SUB binds, probes PUB connect
    snapshots  tcp://127.0.0.1:5582  aggregator PUB binds, clients and probes SUB connect
    requests   tcp://127.0.0.1:5583  aggregator ROUTER binds, clients DEALER connect
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import zmq

from .protocol import MAX_EVENT_BYTES, MAX_REPLY_BYTES
from .security import secure

DEFAULT_EVENTS = "tcp://127.0.0.1:5581"
DEFAULT_SNAPSHOTS = "tcp://127.0.0.1:5582"
DEFAULT_REQUESTS = "tcp://127.0.0.1:5583"

# High-water marks: a probe sends a few messages a second; 10k gives minutes of slack for
# a slow consumer without unbounded memory. PUB drops beyond it (never blocks).
EVENT_HWM = 10_000
SNAPSHOT_HWM = 10_000


@dataclass(frozen=True, slots=True)
class Endpoints:
    events: str = DEFAULT_EVENTS
    snapshots: str = DEFAULT_SNAPSHOTS
    requests: str = DEFAULT_REQUESTS

    @classmethod
    def from_env(cls, base: "Endpoints | None" = None) -> "Endpoints":
        """Environment variables MD_HEALTH_EVENTS / _SNAPSHOTS / _REQUESTS override `base`."""
        b = base or cls()
        return cls(
            events=os.environ.get("MD_HEALTH_EVENTS", b.events),
            snapshots=os.environ.get("MD_HEALTH_SNAPSHOTS", b.snapshots),
            requests=os.environ.get("MD_HEALTH_REQUESTS", b.requests),
        )

    @classmethod
    def on_ports(cls, events: int, snapshots: int, requests: int, host: str = "127.0.0.1") -> "Endpoints":
        return cls(f"tcp://{host}:{events}", f"tcp://{host}:{snapshots}", f"tcp://{host}:{requests}")


def new_context() -> zmq.Context:
    ctx = zmq.Context()
    ctx.linger = 0  # Context.term() must never hang on unsent messages
    return ctx


def _socket(ctx: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    # First line of defence against bad input: libzmq disconnects a peer whose message is
    # larger than this before Python ever sees it.
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    return sock


def _attach(sock: zmq.Socket, endpoint: str, bind: bool) -> zmq.Socket:
    try:
        if endpoint.startswith("tcp://["):  # an IPv6 address: libzmq is IPv4-only unless told
            sock.ipv6 = True
        secure(sock, endpoint, bind)  # CURVE if keys are set up; else refuse a non-loopback bind
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def pub_socket(ctx: zmq.Context, endpoint: str, bind: bool = False) -> zmq.Socket:
    # A probe's publisher (connects, one subscriber: the aggregator) is an XPUB with NODROP,
    # so a full high-water mark makes send() fail with zmq.Again, which Publisher counts as
    # a drop; a plain PUB would drop silently. The aggregator's own PUB (binds, many
    # subscribers) stays lossy: one slow subscriber must never hold back the others.
    sock = _socket(ctx, zmq.PUB if bind else zmq.XPUB, MAX_EVENT_BYTES)
    if not bind:
        sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndhwm = EVENT_HWM if not bind else SNAPSHOT_HWM
    return _attach(sock, endpoint, bind)


def sub_socket(ctx: zmq.Context, endpoint: str, prefixes: tuple[str, ...] = ("",), bind: bool = False,
               max_bytes: int = MAX_EVENT_BYTES) -> zmq.Socket:
    sock = _socket(ctx, zmq.SUB, max_bytes)
    sock.rcvhwm = EVENT_HWM
    for prefix in prefixes:  # subscribe before connecting, so nothing is filtered out early
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("ascii"))
    return _attach(sock, endpoint, bind)


def dealer_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = _socket(ctx, zmq.DEALER, MAX_REPLY_BYTES)
    sock.sndhwm = 100
    # Queue requests only on a completed connection: with the aggregator down, a send
    # fails at once (zmq.Again) instead of piling up stale requests to replay later.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    return _attach(sock, endpoint, bind=False)


def router_socket(ctx: zmq.Context, endpoint: str, sndhwm: int = 1000, rcvhwm: int = 1000,
                  mandatory: bool = False) -> zmq.Socket:
    """A bound ROUTER. High-water marks are read when a peer connects, so they are set
    before binding; `mandatory` (ROUTER_MANDATORY) makes a reply to a full or gone peer fail
    at once, so the caller can count it, instead of being dropped unseen."""
    sock = _socket(ctx, zmq.ROUTER, MAX_EVENT_BYTES)
    sock.sndhwm = sndhwm
    sock.rcvhwm = rcvhwm
    if mandatory:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return _attach(sock, endpoint, bind=True)


def drain(sock: zmq.Socket, max_messages: int = 1000, max_seconds: float = 0.005) -> list:
    """Receive what is waiting without ever blocking, up to a message and a time budget.

    Returns frames (bytes) for single-frame sockets and frame lists for ROUTER.
    """
    out: list = []
    deadline = time.perf_counter() + max_seconds
    multipart = sock.type == zmq.ROUTER
    recv = sock.recv_multipart if multipart else sock.recv
    events = sock.getsockopt
    while len(out) < max_messages:
        # An idle socket holds a frame or two per wake (or none: the add-on drains on every
        # timer tick), and asking ZMQ_EVENTS (about 1.6 us) is cheaper than the zmq.Again a
        # recv on an empty socket raises (about 4.4 us). In a burst a check per frame would
        # cost more than the one exception at its end, so past a few frames recv runs until Again.
        if len(out) < _ASK_FIRST and not events(zmq.EVENTS) & zmq.POLLIN:
            break
        try:
            out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            break
        if time.perf_counter() >= deadline:
            break
    return out


_ASK_FIRST = 4  # frames drained with a ZMQ_EVENTS check before each (see drain)


def close(*sockets: zmq.Socket | None) -> None:
    """Close sockets without waiting for unsent messages."""
    for sock in sockets:
        if sock is not None and not sock.closed:
            sock.close(linger=0)


def endpoint_in_use(endpoint: str, timeout: float = 0.3) -> bool:
    """True if something already listens on a tcp:// endpoint (used to refuse a second
    aggregator with a clear message rather than a bare EADDRINUSE)."""
    import socket

    if not endpoint.startswith("tcp://"):
        return False
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
