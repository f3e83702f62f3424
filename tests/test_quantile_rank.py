"""Quantiles by nearest rank (docs/metrics.md): the q-quantile of n samples is the one at
1-based rank ceil(q * n), so the p99 of a few samples is the slowest; the sketch answers
within 1 % of that exact sample, in every place a quantile is read (bins, a window's
Fenwick tree, a record, an export row)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import sketch
from aggregator.engine import Engine
from tests.test_engine import Clock, timing

SMALL = [1.0, 2.0, 3.5, 15.7]  # an exported 1 s bucket: mean 5.55 ms, max 15.7 ms


def exact_nearest_rank(values: list[float], q: Fraction) -> float:
    """The reference, in exact arithmetic: sorted values at 1-based rank ceil(q * n), at least 1."""
    v = sorted(values)
    return v[max(1, math.ceil(q * len(v))) - 1]


def _bins(values):
    bins: dict[int, int] = {}
    for v in values:
        k = sketch.key(v)
        bins[k] = bins.get(k, 0) + 1
    return bins


def _fenwick(values) -> sketch.Counts:
    counts = sketch.Counts()
    for k, c in _bins(values).items():
        counts.add(k, c)
    return counts


def test_p99_of_four_samples_is_the_slowest_one_everywhere_it_is_read():
    want = sketch.value(sketch.key(15.7))  # the max's bin
    assert want == pytest.approx(15.7, rel=0.01)
    assert sketch.quantiles(_bins(SMALL), (0.99,)) == [want]
    assert _fenwick(SMALL).quantiles((0.99,)) == [want]
    assert sketch.quantiles(_bins(SMALL), (0.5, 0.95))[0] == sketch.value(sketch.key(2.0))  # rank ceil(2) = 2
    clock = Clock()
    engine = Engine(clock)
    for ms in SMALL:
        timing(engine, "x", ms)
    stats = engine.record("x")["stats"]
    assert stats["p99_ms"] == want and stats["p95_ms"] == want and stats["p99_ms"] > stats["avg_ms"]
    clock.t += 1.5
    engine.tick()
    row = [r for r in engine.rows("1s", 10.0) if r["count"] == 4][0]
    assert row["p99_ms"] == want and row["p99_ms"] >= 0.99 * row["max_ms"]


def test_the_rank_is_q_times_n_rounded_up_without_float_noise():
    assert [sketch.nearest_rank(q, 4) for q in (0.0, 0.25, 0.26, 0.5, 0.95, 0.99, 1.0)] == [1, 1, 2, 2, 4, 4, 4]
    assert sketch.nearest_rank(0.07, 100) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert sketch.nearest_rank(0.99, 1) == 1 and sketch.nearest_rank(0.5, 1) == 1


latencies = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e7, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(latencies, min_size=1, max_size=400),
       permille=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=5))
def test_sketch_quantiles_are_within_one_percent_of_the_exact_nearest_rank_sample(values, permille):
    qs = tuple(sorted(p / 1000 for p in permille))
    ours = sketch.quantiles(_bins(values), qs)
    assert _fenwick(values).quantiles(qs) == ours  # the window's tree and plain bins agree exactly
    for p, got in zip(sorted(permille), ours):
        want = exact_nearest_rank(values, Fraction(p, 1000))
        # Exactly the representative value of the bin holding the exact sample ...
        assert got == sketch.value(sketch.key(want)), (p, got, want)
        # ... and so within the mapping's 1 % of it (zero reads back as zero).
        assert abs(got - want) <= 0.01 * want, (p, got, want)


def test_bins_are_the_ddsketch_packages_bins():
    """We share DDSketch's mapping and bins, not its rank rule (q * (n - 1), interpolated):
    asked for the same sample, the package returns the same value. Sample j (0-based) is
    the one it finds at rank (j + 0.5) / (n - 1), clamped to 1."""
    import random

    rng = random.Random(1)
    values = [rng.expovariate(1 / 300) for _ in range(5000)] + [0.0, 0.0]
    bins = _bins(values)
    real = sketch.to_ddsketch(bins)
    n = len(values)
    qs = (0.0, 0.5, 0.95, 0.99, 0.999, 1.0)
    ours = sketch.quantiles(bins, qs)
    theirs = [real.get_quantile_value(min(1.0, (sketch.nearest_rank(q, n) - 1 + 0.5) / (n - 1))) for q in qs]
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert dict(sketch.unpack(sketch.pack(bins))) == bins
    assert ours[0] == 0.0  # zeros read back as zero, not as the smallest bin
