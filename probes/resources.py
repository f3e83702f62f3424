"""Resource use for a status report: the backend's process (when it listens on this
machine) and the host, via psutil. Anything that cannot be known is None, never 0.

Finding "the process listening on port N" means scanning every socket of every process,
which costs tens of milliseconds (more on a machine with many sockets), and confirming
that a known process still listens costs nearly as much. The pid is therefore cached: it
is looked up again at once when that process is gone, its ownership of the port is
confirmed every VERIFY_EVERY seconds, and a port whose owner cannot be seen (a backend in
a container, or run by another user) is scanned again only every RESCAN_AFTER seconds.

Resource use changes slowly and nobody reads it to the second, so it is sampled every
SAMPLE_EVERY seconds, not at every status check (every 2 s): the readings between are the
last ones, repeated. A value still unknown (None: nothing to compare with yet) is sampled
again at the next check, so real figures arrive as soon as they can.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

RESCAN_AFTER = 120.0  # seconds between full scans while no listener was found
VERIFY_EVERY = 300.0  # seconds between re-checks that a found, running process still owns the port
SAMPLE_EVERY = 10.0  # seconds between two real samples (status goes out every check)
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def is_local(host: str) -> bool:
    """True when `host` is this machine (loopback, an address of ours, or our own name)."""
    host = (host or "").strip("[]").lower()
    if host in LOCAL_NAMES or host == socket.gethostname().lower():
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    try:
        ours = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except (OSError, psutil.Error):
        return False
    return str(addr) in ours


def _listener_pid(port: int) -> int | None:
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):  # macOS needs root for other processes' sockets
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None


class ResourceSampler:
    """Keeps psutil.Process objects between samples: cpu_percent is a difference between
    two calls, so the first sample of a process (or of the host) honestly says None."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, Any] | None = None  # the last real sample: process, host
        self._sampled_at = -SAMPLE_EVERY
        self._sampled_url = ""
        self._proc: psutil.Process | None = None
        self._port: int | None = None
        self._proc_primed = False
        self._host_primed = False
        self._last_scan = -RESCAN_AFTER
        self._verified = -VERIFY_EVERY

    def _process(self, url: str) -> psutil.Process | None:
        parts = urlsplit(url)
        if not parts.hostname or not is_local(parts.hostname):
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        now = self._clock()
        if self._proc is not None and self._port == port:
            try:
                if not self._proc.is_running():
                    self._last_scan = -RESCAN_AFTER  # a restarted backend: find its new pid now
                    raise psutil.NoSuchProcess(self._proc.pid)
                # Listing a process's sockets costs milliseconds of system time (the
                # always-on footprint), so confirm it still owns the port only now and then;
                # a backend restarted under a new pid fails is_running() at once anyway.
                if now - self._verified < VERIFY_EVERY:
                    return self._proc
                # Process.net_connections is psutil >= 6; connections() is its older name.
                conns = getattr(self._proc, "net_connections", None) or self._proc.connections
                if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                       for c in conns(kind="tcp")):
                    self._verified = now
                    return self._proc
            except (psutil.Error, OSError):
                pass
            self._proc = None
        if self._port == port and now - self._last_scan < RESCAN_AFTER and self._proc is None:
            return None
        self._port, self._last_scan = port, now
        pid = _listener_pid(port)
        if pid is None:
            return None
        try:
            self._proc = psutil.Process(pid)
        except psutil.Error:
            return None
        self._proc_primed = False
        self._verified = now
        return self._proc

    def sample(self, url: str, vram_used_bytes: int | None = None) -> dict[str, Any]:
        """Resource use now; `vram_used_bytes` (read from the backend's own reply) is always current."""
        now = self._clock()
        last = self._last
        if (last is not None and url == self._sampled_url and now - self._sampled_at < SAMPLE_EVERY
                and last["host"]["cpu_percent"] is not None
                and (last["process"] is None or last["process"]["cpu_percent"] is not None)):
            return {"process": last["process"], "host": last["host"], "vram_used_bytes": vram_used_bytes}
        self._last = self._measure(url)
        self._sampled_at, self._sampled_url = now, url
        return {**self._last, "vram_used_bytes": vram_used_bytes}

    def _measure(self, url: str) -> dict[str, Any]:
        process = None
        proc = self._process(url) if url else None
        if proc is not None:
            try:
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss
                process = {"pid": proc.pid, "cpu_percent": cpu if self._proc_primed else None, "rss_bytes": rss}
                self._proc_primed = True
            except (psutil.Error, OSError):
                self._proc = None
        host_cpu = psutil.cpu_percent(None)
        vm = psutil.virtual_memory()
        host = {"cpu_percent": host_cpu if self._host_primed else None,
                "ram_total": vm.total, "ram_used": vm.total - vm.available}
        self._host_primed = True
        return {"process": process, "host": host}
