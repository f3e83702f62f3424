"""Runs one child process per enabled probe, restarting any that exits, with backoff.

Children are tied to us by a stdin lifeline (bus/lifeline.py): closing it stops them on
every platform, and if we are killed they notice EOF and exit, so nothing is orphaned.
A child that crashes again and again is restarted after 0.5, 1, 2 ... up to 30 s; once a
child has stayed up for STABLE_AFTER seconds its backoff starts over.

How a child is made depends on the platform, like multiprocessing's "fork" and "spawn":
- Linux: the supervisor imports the probe runtime once (zmq, msgpack, psutil, the probe
  classes; no zmq context, no socket), freezes it out of the garbage collector, and forks
  each child from that pristine state. The children share those pages with it instead of
  importing ~9 MB each (bench figures 9 and 15 count PSS). A forked child is named
  `probe-<service>` (its comm, what ps and psutil's name() show); its cmdline stays ours.
- elsewhere (macOS, where fork is unsafe with system frameworks; Windows, which has no
  fork): `python -m probes run <service>`, a fresh interpreter.
Either way the child runs the same function, `probes.cli.main(["run", <service>])`.

The restart decisions are a pure state machine per child (`Child`), driven by a monotonic
time and exit events. Each child has a thread that blocks until its process exits, so an
idle supervisor does not wake at all.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time

from bus.config import Config
from bus.lifeline import ENV_FLAG, spawn, stop as stop_child

log = logging.getLogger("probes.supervisor")

MAX_BACKOFF = 30.0
FIRST_BACKOFF = 0.5
MAX_DOUBLINGS = 16  # the exponent stops here: 0.5 s * 2 ** 16 is far past the cap already
STABLE_AFTER = 60.0  # seconds a child must stay up before its restart backoff is reset
# Windows cannot interrupt a lock wait with Ctrl+C, so there the main thread looks at `stop`
# once a second; POSIX delivers signals into the wait, so it sleeps until something happens.
MAIN_WAKE = None if os.name == "posix" else 1.0
FORK = sys.platform.startswith("linux") and hasattr(os, "fork")
NAME_PREFIX = "probe-"  # a forked child's comm: "probe-comfyui" (Linux keeps 15 bytes)


def probe_args(service: str, config_path: str | None) -> list[str]:
    """The arguments of `python -m probes ...` that run one probe."""
    return (["--config", str(config_path)] if config_path else []) + ["run", service]


def probe_command(service: str, config_path: str | None) -> list[str]:
    return [sys.executable, "-m", "probes"] + probe_args(service, config_path)


def probe_service(proc) -> str | None:
    """Which service a probe process (a psutil.Process) serves, however it was started:
    `... probes run <service>` in its cmdline, or a forked child's name `probe-<service>`
    (cut to 15 bytes by Linux). None for any other process."""
    try:
        args = proc.cmdline()
        if "run" in args and args.index("run") + 1 < len(args):
            return args[args.index("run") + 1]
        name = proc.name()
    except Exception:  # psutil.Error: gone, or not ours to look at
        return None
    return name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else None


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


class Forked:
    """A forked child with the part of subprocess.Popen's interface that the supervisor and
    bus.lifeline.stop use: pid, stdin (our end of its lifeline), poll, wait, kill, returncode."""

    def __init__(self, pid: int, stdin) -> None:
        self.pid, self.stdin, self.returncode = pid, stdin, None
        self._lock = threading.Lock()  # one waitpid at a time, as in Popen

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self) -> int:
        with self._lock:
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def preload(services: dict[str, dict]) -> None:
    """Import, once and before any fork, what the probes of `services` run on. Imports only:
    no zmq context, no socket and no thread may exist in a process that forks probes."""
    import msgpack  # noqa: F401
    import psutil  # noqa: F401
    import zmq  # noqa: F401

    from . import base, http, resources  # noqa: F401
    from .registry import probe_class

    for name, settings in services.items():
        flavour = settings.get("flavour", name)
        try:
            probe_class(flavour)
        except Exception:  # KeyError, ImportError: that child says what is wrong when it starts
            pass
    gc.freeze()  # the collector never touches (so never copies) what the children inherit


def _set_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # a name is a convenience; the probe runs without it


class Forker:
    """Makes forked children. Each gets a fresh lifeline pipe as its stdin and closes every
    other child's end of theirs, so our death (the kernel closes our ends) reaches each one."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.ours: list = []  # our ends of the live children's lifelines

    def __call__(self, service: str) -> Forked:
        read, write = os.pipe()
        ours = os.fdopen(write, "wb", buffering=0)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else the child would print what we buffered, too
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                for other in self.ours + [ours]:
                    other.close()
                os.dup2(read, 0)
                os.close(read)
                # Our stdin object may be locked by our own lifeline thread, which the child
                # does not have: the child reads its lifeline through a fresh one.
                sys.stdin = open(0, closefd=False)
                os.environ[ENV_FLAG] = "1"
                _set_name(NAME_PREFIX + service)
                from .cli import main

                code = main(probe_args(service, self.config_path))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os._exit(code or 0)
        os.close(read)
        self.ours.append(ours)
        return Forked(pid, ours)

    def forget(self, child: Forked) -> None:
        if child.stdin in self.ours:
            self.ours.remove(child.stdin)
        try:
            child.stdin.close()
        except OSError:
            pass


def supervise(cfg: Config, config_path: str | None, stop: threading.Event, *,
              first_backoff: float = FIRST_BACKOFF, max_backoff: float = MAX_BACKOFF) -> int:
    enabled = {name: s for name, s in cfg.services.items() if s.get("enabled", True)}
    services = list(enabled)
    procs: dict[str, object] = {}
    now = time.monotonic()
    lives = {name: Child(now, first_backoff, max_backoff) for name in services}
    lock = threading.Lock()  # one start at a time; none once we are stopping
    stopping = []
    if FORK:
        preload(enabled)
        forker = Forker(config_path)
        start, forget = forker, forker.forget
    else:
        start, forget = (lambda name: spawn(probe_command(name, config_path))), (lambda proc: None)
    log.info("supervising probes: %s", ", ".join(services) or "(none enabled)")

    # Keepers log only while holding `lock`, which every fork holds too: a child forked while
    # another thread was inside a write to stderr would inherit that stream's lock held.
    def keep(name: str) -> None:
        life = lives[name]
        while True:
            with lock:
                if stopping:
                    return
                life.started(time.monotonic())
                try:
                    proc = procs[name] = start(name)
                    log.info("probe %s started (pid %d)", name, proc.pid)
                except OSError as exc:  # no memory, no pids left: try again after the backoff
                    proc, code = None, f"none: it did not start ({exc})"
            if proc is not None:
                code = proc.wait()
                if stop.is_set():
                    return
                with lock:
                    forget(proc)
            delay = life.exited(time.monotonic())
            with lock:
                log.warning("probe %s exited with code %s; restart %d in %g s", name, code, life.restarts, delay)
            if stop.wait(delay):
                return

    keepers = [threading.Thread(target=keep, args=(name,), name=f"keep-{name}", daemon=True) for name in services]
    try:
        for thread in keepers:
            thread.start()
        while not stop.wait(MAIN_WAKE):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()  # a keeper whose child exits from now on only returns
        with lock:
            stopping.append(True)
        for proc in procs.values():
            if proc.stdin:
                try:
                    proc.stdin.close()  # all children at once, then wait for each
                except OSError:
                    pass
        for proc in procs.values():
            stop_child(proc)
        for thread in keepers:
            thread.join(timeout=5)
        log.info("all probes stopped")
    return 0
