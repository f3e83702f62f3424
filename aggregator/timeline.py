"""The aggregator's time: one value that never runs backwards, advances by monotonic
seconds, and reads as wall time (DESIGN decision 8).

The engine gets this as its clock. Differences between two readings are monotonic
intervals (liveness, alert timers, down timers); the readings themselves label buckets.

- Normally each reading is the previous one plus the monotonic time since it, so a
  slewed or stepped wall clock changes no interval.
- Wall clock stepped FORWARD (NTP correction, or a laptop waking on a system whose
  monotonic clock stops in suspend, as Linux's CLOCK_MONOTONIC does): once the wall clock is
  more than `tolerance` ahead of the timeline, the timeline jumps to it, so labels stay
  wall time. The engine sees that jump as one long step between two readings and counts
  it as unobserved time (unknown, never up) when it is longer than server.OBSERVED_STEP
  (2 s); a shorter step is credited as ordinary time. A monotonic clock that counts
  suspend (Windows) gives the same long step without any re-anchoring.
- Wall clock stepped BACK: the timeline keeps running on monotonic time and its labels
  read ahead of the wall clock by the size of the step. They stay that much ahead (both
  clocks advance at the same rate) until a forward step closes the difference, or until a
  restart with no stored history ahead of the clock. Nothing freezes meanwhile: buckets
  close, probes are timed, alerts run.
- On restore, `not_before(end)` starts the timeline at or after the end of the stored
  history, so a history written while the clock was ahead keeps closing buckets; the
  time between the stored end and now is the aggregator's downtime, credited unknown.
"""
from __future__ import annotations

import time
from typing import Callable

FORWARD_TOLERANCE = 1.0  # seconds the wall clock may run ahead before the timeline follows it


class Timeline:
    def __init__(self, mono: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 tolerance: float = FORWARD_TOLERANCE) -> None:
        self.mono, self.wall, self.tolerance = mono, wall, tolerance
        self._mono = mono()
        self._t = wall()

    def not_before(self, t: float) -> None:
        """Never read earlier than t (the end of restored history)."""
        if t > self._t:
            self._t = t

    def __call__(self) -> float:
        m = self.mono()
        step = m - self._mono
        self._mono = m
        t = self._t + (step if step > 0 else 0.0)
        w = self.wall()
        if w - t > self.tolerance:  # the wall clock stepped forward: labels follow it
            t = w
        self._t = t
        return t
