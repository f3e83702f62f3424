"""Runs one child process per enabled probe, restarting any that exits, with backoff.

Children are tied to us by a stdin lifeline (bus/lifeline.py): closing it stops them on
every platform, and if we are killed they notice EOF and exit, so nothing is orphaned.
A child that crashes again and again is restarted after 0.5, 1, 2 ... up to 30 s; once a
child has stayed up for STABLE_AFTER seconds its backoff starts over.
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
STABLE_AFTER = 60.0  # seconds a child must stay up before its restart backoff is reset


def probe_command(service: str, config_path: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "probes"]
    if config_path:
        cmd += ["--config", str(config_path)]
    return cmd + ["run", service]


def restart_delay(restarts: int) -> float:
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, restarts - 1))


def supervise(cfg: Config, config_path: str | None, stop: threading.Event) -> int:
    services = [name for name, s in cfg.services.items() if s.get("enabled", True)]
    children: dict[str, object] = {}
    started: dict[str, float] = {}
    restarts: dict[str, int] = {name: 0 for name in services}
    next_start: dict[str, float] = {name: 0.0 for name in services}
    log.info("supervising probes: %s", ", ".join(services) or "(none enabled)")
    try:
        while not stop.is_set():
            now = time.monotonic()
            for name in services:
                proc = children.get(name)
                if proc is not None and proc.poll() is None:
                    if restarts[name] and now - started[name] >= STABLE_AFTER:
                        restarts[name] = 0  # it has settled: a later crash starts the backoff over
                    continue
                if proc is not None:
                    restarts[name] += 1
                    delay = restart_delay(restarts[name])
                    log.warning("probe %s exited with code %s; restart %d in %.1f s",
                                name, proc.returncode, restarts[name], delay)
                    next_start[name] = now + delay
                    children[name] = None
                if now >= next_start[name]:
                    children[name] = spawn(probe_command(name, config_path))
                    started[name] = now
                    log.info("probe %s started (pid %d)", name, children[name].pid)
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in children.values():
            if proc is not None and proc.stdin:
                try:
                    proc.stdin.close()  # all children at once, then wait for each
                except OSError:
                    pass
        for proc in children.values():
            if proc is not None:
                stop_child(proc)
        log.info("all probes stopped")
    return 0
