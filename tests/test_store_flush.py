"""Store flush (issue 11 item 5): a failed commit loses nothing; the next flush writes those
buckets. Real SQLite: a trigger refuses the writes, as a full disk or a read-only remount would."""
from __future__ import annotations

import sqlite3

import pytest

from aggregator.engine import Engine
from aggregator.store import FILENAME, Store, StoreUnavailable
from tests.test_engine import Clock, beat, status, timing


def run(engine, clock, seconds: int) -> None:
    for i in range(seconds):
        beat(engine)
        status(engine, "x", "connected" if i % 20 < 15 else "error")
        timing(engine, "x", 20.0 + i % 17)
        clock.t += 1
        engine.tick()


def closed_rows(engine) -> list[tuple]:
    return [(r["tier"], r["ts"], r["count"], r["p95_ms"], r["up_s"], r["down_s"])
            for tier in ("1s", "10s", "1m") for r in engine.rows(tier, 10 * 86400, "x") if r["complete"]]


def test_buckets_of_a_failed_commit_are_written_by_the_next_flush(tmp_path):
    clock = Clock()
    engine = Engine(clock)
    store = Store(tmp_path)
    run(engine, clock, 40)
    store.flush(engine)

    refuse = sqlite3.connect(tmp_path / FILENAME)
    refuse.execute("CREATE TRIGGER refuse BEFORE INSERT ON buckets BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    refuse.commit()
    run(engine, clock, 90)  # these buckets' first flush fails ...
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.flush(engine)
    refuse.execute("DROP TRIGGER refuse")
    refuse.commit()
    refuse.close()
    run(engine, clock, 5)
    assert store.flush(engine) > 90  # ... so the next one writes them (and the new ones)
    store.close()

    again = Engine(clock, engine.settings)
    store = Store(tmp_path)
    store.restore(again)
    store.close()
    want, got = closed_rows(engine), closed_rows(again)
    assert len(want) > 130
    assert got == want
