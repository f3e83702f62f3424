"""Runs one child process per enabled probe, restarting any that exits, with backoff.

Children are tied to us by a stdin lifeline (bus/lifeline.py): closing it stops them on
every platform, and if we are killed they notice EOF and exit, so nothing is orphaned.
A child that crashes again and again is restarted after 0.5, 1, 2 ... up to 30 s; once a
child has stayed up for STABLE_AFTER seconds its backoff starts over.

The restart decisions are a pure state machine per child (`Child`), driven by a monotonic
time and exit events; `supervise` only spawns, polls and logs.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

from bus.config import Config
from bus.lifeline import spawn, stop as stop_child

log = logging.getLogger("probes.supervisor")

MAX_BACKOFF = 30.0
FIRST_BACKOFF = 0.5
MAX_DOUBLINGS = 16  # the exponent stops here: 0.5 s * 2 ** 16 is far past the cap already
STABLE_AFTER = 60.0  # seconds a child must stay up before its restart backoff is reset
POLL_EVERY = 0.2  # seconds between looks at the children


def probe_command(service: str, config_path: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "probes"]
    if config_path:
        cmd += ["--config", str(config_path)]
    return cmd + ["run", service]


def restart_delay(restarts: int, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Seconds before restart number `restarts` (1 = the first): doubling from `first` up to `cap`."""
    return min(cap, first * 2.0 ** min(max(0, restarts - 1), MAX_DOUBLINGS))


class Child:
    """One probe child's lifecycle, without processes or clocks of its own.

        STARTING ---started---> RUNNING ---exited---> BACKING_OFF ---(due)---> started ...

    `start_due(now)` says when to spawn; `exited(now)` returns the delay before the next
    start. A child that ran for STABLE_AFTER seconds before it exited starts its backoff
    over, so one crash a day is restarted after 0.5 s, not 30 s.
    """

    STARTING, RUNNING, BACKING_OFF = "starting", "running", "backing off"

    def __init__(self, now: float, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF) -> None:
        self.state = self.STARTING
        self.first, self.cap = first, cap
        self.due = now  # when the next start may happen (STARTING, BACKING_OFF)
        self.started_at = now
        self.restarts = 0  # exits since the child last settled

    def start_due(self, now: float) -> bool:
        return self.state != self.RUNNING and now >= self.due

    def started(self, now: float) -> None:
        self.state, self.started_at = self.RUNNING, now

    def exited(self, now: float) -> float:
        if now - self.started_at >= STABLE_AFTER:
            self.restarts = 0  # it had settled: this crash starts the backoff over
        self.restarts += 1
        delay = restart_delay(self.restarts, self.first, self.cap)
        self.state, self.due = self.BACKING_OFF, now + delay
        return delay


def supervise(cfg: Config, config_path: str | None, stop: threading.Event, *,
              first_backoff: float = FIRST_BACKOFF, max_backoff: float = MAX_BACKOFF) -> int:
    services = [name for name, s in cfg.services.items() if s.get("enabled", True)]
    procs: dict[str, object] = {}
    now = time.monotonic()
    lives = {name: Child(now, first_backoff, max_backoff) for name in services}
    log.info("supervising probes: %s", ", ".join(services) or "(none enabled)")
    try:
        while not stop.is_set():
            for name in services:
                proc, life = procs.get(name), lives[name]
                if proc is not None and proc.poll() is not None:
                    delay = life.exited(time.monotonic())
                    log.warning("probe %s exited with code %s; restart %d in %g s",
                                name, proc.returncode, life.restarts, delay)
                    procs[name] = None
                if life.start_due(time.monotonic()):
                    procs[name] = spawn(probe_command(name, config_path))
                    life.started(time.monotonic())
                    log.info("probe %s started (pid %d)", name, procs[name].pid)
            stop.wait(POLL_EVERY)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs.values():
            if proc is not None and proc.stdin:
                try:
                    proc.stdin.close()  # all children at once, then wait for each
                except OSError:
                    pass
        for proc in procs.values():
            if proc is not None:
                stop_child(proc)
        log.info("all probes stopped")
    return 0
