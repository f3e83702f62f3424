"""Runs one child process per enabled probe, restarting any that exits, with backoff.

Children are tied to us by a stdin lifeline (bus/lifeline.py): closing it stops them on
every platform, and if we are killed they notice EOF and exit, so nothing is orphaned.
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


def probe_command(service: str, config_path: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "probes"]
    if config_path:
        cmd += ["--config", str(config_path)]
    return cmd + ["run", service]


def supervise(cfg: Config, config_path: str | None, stop: threading.Event) -> int:
    services = [name for name, s in cfg.services.items() if s.get("enabled", True)]
    children: dict[str, object] = {}
    restarts: dict[str, int] = {name: 0 for name in services}
    next_start: dict[str, float] = {name: 0.0 for name in services}
    log.info("supervising probes: %s", ", ".join(services) or "(none enabled)")
    try:
        while not stop.is_set():
            now = time.monotonic()
            for name in services:
                proc = children.get(name)
                if proc is not None and proc.poll() is None:
                    continue
                if proc is not None:
                    restarts[name] += 1
                    delay = min(MAX_BACKOFF, 0.5 * 2 ** (restarts[name] - 1))
                    log.warning("probe %s exited with code %s; restart %d in %.1f s",
                                name, proc.returncode, restarts[name], delay)
                    next_start[name] = now + delay
                    children[name] = None
                if now >= next_start[name]:
                    children[name] = spawn(probe_command(name, config_path))
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in children.values():
            if proc is not None:
                stop_child(proc)
    return 0
