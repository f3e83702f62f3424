"""A stand-in for the aggregator's two bound sockets, for probe tests without an aggregator:
a SUB bound on the events endpoint that records every frame a probe publishes, and a PUB
bound on the snapshots endpoint to send control.* commands (refresh). Real ZeroMQ sockets.
"""
from __future__ import annotations

import threading
import time

from bus.protocol import Publisher, Rejection, decode
from bus.sockets import Endpoints, close, new_context, pub_socket, sub_socket

from probes.base import ProbeRunner


class BusTap:
    def __init__(self, endpoints: Endpoints) -> None:
        self.ctx = new_context()
        self.sub = sub_socket(self.ctx, endpoints.events, bind=True)
        self.pub = pub_socket(self.ctx, endpoints.snapshots, bind=True)
        self.control = Publisher(self.pub, "test")
        self.frames: list[bytes] = []
        self.messages: list = []

    def pump(self, seconds: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if not self.sub.poll(max(0, int(left * 1000))):
                if time.monotonic() >= deadline:
                    return
                continue
            frame = self.sub.recv()
            self.frames.append(frame)
            msg = decode(frame)
            if not isinstance(msg, Rejection):
                self.messages.append((time.monotonic(), msg))

    def statuses(self, service: str | None = None) -> list:
        return [m.body for _, m in self.messages if m.topic.startswith("status.")
                and (service is None or m.topic == f"status.{service}")]

    def last_status(self, service: str | None = None) -> dict | None:
        s = self.statuses(service)
        return s[-1] if s else None

    def timings(self) -> list:
        return [m.body for _, m in self.messages if m.topic.startswith("timing.")]

    def wait(self, predicate, timeout: float = 10.0):
        """Pump until predicate(self) is truthy; return its value or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.02)
            value = predicate(self)
            if value:
                return value
        raise AssertionError(f"condition not met within {timeout} s; last status: {self.last_status()}")

    def wait_state(self, state: str, service: str | None = None, timeout: float = 10.0) -> dict:
        return self.wait(lambda t: (s := t.last_status(service)) and s["state"] == state and s, timeout)

    def join(self, publisher: Publisher, timeout: float = 10.0) -> None:
        """Beat on `publisher` until this tap hears it: past the slow-joiner window, every
        later message arrives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publisher.send(f"heartbeat.{publisher.src}", {"interval": 1.0, "services": []})
            before = len(self.frames)
            self.pump(0.05)
            if len(self.frames) > before:
                return
        raise AssertionError("the publisher never reached the tap")

    def refresh(self, service: str | None = None) -> None:
        self.control.send("control.refresh", {"service": service} if service else {})

    def close(self) -> None:
        close(self.sub, self.pub)
        self.ctx.term()


class RunnerThread:
    """A ProbeRunner in a thread of this process (the probe loop, bus side included)."""

    def __init__(self, probe, endpoints: Endpoints, **kw) -> None:
        self.runner = ProbeRunner(probe, endpoints, **kw)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self) -> ProbeRunner:
        self.thread.start()
        return self.runner

    def __exit__(self, *exc) -> None:
        self.runner.stop.set()
        self.thread.join(timeout=5)
