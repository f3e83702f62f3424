"""Names a sender chooses never grow the engine's tables: error kinds and usage models are capped."""
from __future__ import annotations

from aggregator.engine import MAX_ERROR_KINDS, MAX_USAGE_MODELS, Engine
from bus.protocol import Message


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _timing(i: int, t: float) -> Message:
    return Message("timing.comfyui", "probe.comfyui", i, t, {
        "service": "comfyui", "endpoint": "/queue", "duration_ms": 5.0, "ok": False, "error_kind": f"forged{i}"})


def test_forged_error_kinds_and_models_are_capped_and_counted_as_other():
    clock = Clock()
    engine = Engine(clock)
    for i in range(5000):
        clock.t += 0.01
        engine.ingest(_timing(i, clock.t))
        engine.ingest(Message("llm.usage", "probe.llm", i, clock.t, {
            "model": f"model{i}", "tokens_in": 1, "tokens_out": 1, "latency_ms": 3.0}))
    clock.t += 120
    engine.tick()
    rows = engine.rows("1s", 3600, "comfyui")
    kinds = set().union(*(r["errors"] for r in rows))
    assert len(kinds) <= MAX_ERROR_KINDS + 1 and "other" in kinds, len(kinds)
    assert sum(sum(r["errors"].values()) for r in rows) == sum(r["failed"] for r in rows) > 0
    usage = engine.services["llm"].usage
    assert len(usage) <= MAX_USAGE_MODELS + 1 and usage["other"][2] == 5000 - MAX_USAGE_MODELS
