"""The shortened soak: 500 simulated services at 1 Hz against a real aggregator process.

The full 10-minute soak is `make soak` (bench/soak.py, same code). Here the retention
tiers are shrunk (1s:5s, 5s:10s) so that every ring is full after the 12 s warm-up, which
is the steady state the long run reaches after its 5-minute tier has filled: any RSS growth
in the 25 s after that is a leak, not a ring filling up. (Shorter rings shorten only the
warm-up; the 25 s watched for growth and the snapshots timed in them are as before.)
"""
from __future__ import annotations

from bench.soak import TARGETS, run
from tests.reliability import measured  # noqa: F401 - fixture


def test_short_soak_500_services(measured):
    r = run(services=500, duration=37.0, warmup=12.0, tiers=["1s:5s", "5s:10s"])
    assert r["aggregator_alive"]
    assert r["events_sent"] >= 500 * 3 * 32
    assert r["dropped"] == 0 and r["dropped_at_sender"] == 0 and r["rejected"] == 0, r
    assert r["accepted"] == r["events_sent"], r
    assert r["rss_growth_pct"] < TARGETS["rss_growth_pct"], r
    # The target (250 ms) is enforced by `make soak`; a shared test machine gets 4x slack.
    assert r["snapshot_p95_ms"] < 4 * TARGETS["snapshot_p95_ms"], r
    measured.record("soak_short", section="Load and soak", order=10,
                    case="Shortened soak: 500 simulated services at 1 Hz for 37 s (tiers shrunk to 1s:5s, 5s:10s)",
                    required=f"RSS growth after warm-up < {TARGETS['rss_growth_pct']:g} %, no dropped events, "
                             f"snapshot p95 < {4 * TARGETS['snapshot_p95_ms']:g} ms on a shared test machine (4x the "
                             f"{TARGETS['snapshot_p95_ms']:g} ms target, which `make soak` enforces)",
                    measured=f"{r['events_sent']:,} events ({r['events_per_s']:,}/s): {r['accepted']:,} accepted, "
                             f"0 dropped, 0 rejected; peak RSS {r['rss_peak_first_half_mib']} → "
                             f"{r['rss_peak_second_half_mib']} MiB ({r['rss_growth_pct']:+.1f} %), first vs. second "
                             f"half after the {r['warmup_s']:g} s warm-up; snapshot "
                             f"round trip (all 500 services + history) p50 {r['snapshot_p50_ms']:.0f} ms, p95 "
                             f"{r['snapshot_p95_ms']:.0f} ms, max {r['snapshot_max_ms']:.0f} ms",
                    **{k: v for k, v in r.items() if isinstance(v, (int, float))})
