"""Report language-model usage to the health monitor: one `llm.usage` event per call.

The add-on (or any script) calls this after each LLM request; the aggregator adds the
tokens up by model, keeps the latency distribution and estimates the cost from the
`[prices]` table (docs/metrics.md). Usage:

    from bus.usage import UsageReporter

    usage = UsageReporter()          # once; connects to the events endpoint (MD_HEALTH_EVENTS)
    ...
    usage.report("gpt-4o-mini", tokens_in=812, tokens_out=95, latency_ms=1430.0, provider="openai")
    ...
    usage.close()

`report()` never blocks and never raises for a missing aggregator: events are queued by
ZeroMQ up to the high-water mark and counted as dropped beyond it (`dropped`). Like any
PUB socket, events sent in the first few milliseconds after connecting may be lost
(ZeroMQ's "slow joiner"); create the reporter once and keep it. Only the model name,
token counts, latency and provider name are sent, never prompts or keys.
"""
from __future__ import annotations

import math
import os
import threading

import zmq

from .protocol import Publisher
from .sockets import Endpoints, new_context, pub_socket

TOPIC = "llm.usage"


class UsageReporter:
    def __init__(self, endpoints: Endpoints | None = None, *, src: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.endpoints = endpoints or Endpoints.from_env()
        self._own_ctx = context is None
        self.ctx = context or new_context()
        self.sock = pub_socket(self.ctx, self.endpoints.events)
        self.publisher = Publisher(self.sock, src or f"usage.{os.getpid()}")
        self._lock = threading.Lock()  # a socket is not thread-safe; reports may come from worker threads

    @property
    def dropped(self) -> int:
        return self.publisher.dropped

    def report(self, model: str, tokens_in: int, tokens_out: int, latency_ms: float,
               provider: str | None = None) -> bool:
        """Publish one usage event. Returns False if it was dropped (queue full).
        Raises ValueError for values the aggregator would reject (a bug in the caller)."""
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        for name, v in (("tokens_in", tokens_in), ("tokens_out", tokens_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
        if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or latency_ms < 0 \
                or not math.isfinite(latency_ms):
            raise ValueError(f"latency_ms must be a number >= 0, got {latency_ms!r}")
        body = {"model": model[:200], "tokens_in": tokens_in, "tokens_out": tokens_out,
                "latency_ms": float(latency_ms)}
        if provider:
            body["provider"] = str(provider)[:64]
        with self._lock:
            return self.publisher.send(TOPIC, body)

    def close(self) -> None:
        # A short linger so the last reports still go out when a script closes right after them.
        self.sock.close(linger=1000)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "UsageReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
