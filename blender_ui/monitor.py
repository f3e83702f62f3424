"""The local monitor: the aggregator and probe processes this add-on starts as its children.

An explicit state machine, so the panel never guesses from process flags:

    stopped --start--> starting --the monitor's heartbeat arrives--> running
    starting / running --one child exits--> degraded --start (the missing child)--> starting
    starting / running / degraded --stop--> stopping --every child has exited--> stopped
    any --both children exit--> stopped (with the reason kept in `note`)

`update()` recomputes the state from the processes and the client's `online`; the
operators call it right after acting, so the panel is current at once, and the timer
calls it once a second to notice exits. Everything runs on Blender's main thread and never
blocks, except `stop(wait=True)` when the add-on is disabled or Blender quits.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

STOPPED, STARTING, RUNNING, DEGRADED, STOPPING = "stopped", "starting", "running", "degraded", "stopping"
ROLES = {"aggregator": ("-m", "aggregator", "run"), "probes": ("-m", "probes", "run-all")}
STOP_GRACE = 3.0  # seconds a child may take to stop after its lifeline closed, then it is killed


class LocalMonitor:
    def __init__(self) -> None:
        self.state = STOPPED
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping: list[tuple[subprocess.Popen, float]] = []  # (process, monotonic kill deadline)
        self.note = ""           # the last exit, in words (shown while degraded or stopped)
        self.log_path: Path | None = None

    def alive(self) -> list[str]:
        return [role for role, proc in self.children.items() if proc.poll() is None]

    def missing(self) -> list[str]:
        return [role for role in ROLES if role not in self.alive()]

    def start(self, python: str, env: dict[str, str], cwd: str, log_path: Path, spawn) -> list[str]:
        """Start every role that is not running (all of them from stopped; the dead one
        when degraded). Returns the roles started; raises OSError if one cannot start."""
        roles = self.missing()
        self.log_path = log_path
        with open(log_path, "a", encoding="utf-8") as logf:
            logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {', '.join(roles)} with {python}\n")
            logf.flush()
            kwargs = dict(env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                          creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            for role in roles:
                self.children[role] = spawn([python, *ROLES[role]], **kwargs)
        self.note = ""
        self.state = STARTING
        return roles

    def stop(self, wait: bool, stop_one=None) -> int:
        """Close every child's lifeline (they stop in parallel). Without `wait` this never
        blocks: `update()` kills a child that overstays STOP_GRACE. Returns how many were
        running."""
        procs = [p for p in self.children.values() if p.poll() is None]
        self.children = {}
        for proc in procs:
            try:
                if proc.stdin:
                    proc.stdin.close()
            except OSError:
                pass
        if wait:
            for proc in procs + [p for p, _ in self.stopping]:
                stop_one(proc, grace=STOP_GRACE)
            self.stopping = []
            self.state = STOPPED
        else:
            self.stopping += [(proc, time.monotonic() + STOP_GRACE) for proc in procs]
            self.state = STOPPING if self.stopping else STOPPED
        return len(procs)

    def update(self, online: bool) -> str:
        """Reap exits, kill overstayers, and move to the state the processes are in."""
        now = time.monotonic()
        keep = []
        for proc, deadline in self.stopping:
            if proc.poll() is None:
                if now > deadline:
                    proc.kill()
                    proc.wait(0.5)
                else:
                    keep.append((proc, deadline))
        self.stopping = keep
        for role, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[role]
                where = f"; see {self.log_path}" if self.log_path else ""
                self.note = f"The local {role} exited with code {proc.returncode}{where}"
        alive = self.alive()
        if self.stopping and not alive:
            self.state = STOPPING
        elif not alive:
            self.state = STOPPED
        elif len(alive) < len(ROLES):
            self.state = DEGRADED
        else:
            self.state = RUNNING if online else STARTING
        return self.state


# -- the add-on's side: preferences, paths, the window manager ------------------------------
def _user_dir() -> Path:
    import bpy

    try:  # an extension (4.2+) writes into its own user directory
        return Path(bpy.utils.extension_path_user(__package__, create=True))
    except Exception:  # noqa: BLE001 - a legacy add-on, or Blender before 4.2
        return Path(bpy.utils.user_resource("CONFIG", path="movie_director_health", create=True))


def monitor_python(p) -> tuple[str, str]:
    """The interpreter the local monitor's children run with, and a problem in words ("" if none)."""
    import bpy

    python = bpy.path.abspath(p.monitor_python) if p is not None and p.monitor_python.strip() else sys.executable
    if not Path(python).is_file():
        return python, f"No Python interpreter at {python!r} (see the add-on preferences)"
    return python, ""


def find_backends(write: bool) -> tuple[bool, str]:
    """Start `md-health discover --json` (with `write`, `--write` too) as a child with the
    local monitor's interpreter and environment; the timer collects its answer."""
    from . import deps, state

    if deps.MISSING:
        return False, deps.MISSING
    python, problem = monitor_python(state.prefs())
    if problem:
        return False, problem
    try:
        state.RT.discovery.start(python, deps.child_environment(python), str(deps.BACKEND_ROOT), write)
    except OSError as exc:
        return False, f"Cannot start {python}: {exc}"
    return True, "Writing the backends found to the monitor's config" if write else "Looking for backends"


def start_local() -> tuple[bool, str]:
    """Start the aggregator and every enabled probe as children of Blender (or, when
    degraded, the one that exited). Mirrors the new state onto the panels at once."""
    import bpy

    from . import connection, deps, runtime, state

    rt = state.RT
    mon = rt.monitor
    try:
        if deps.MISSING:
            return False, deps.MISSING
        if not mon.missing():
            return False, "The local monitor is already running"
        p = state.prefs()
        ep = connection.endpoints_from(p)
        if "aggregator" in mon.missing() and deps.sockets.endpoint_in_use(ep.snapshots, timeout=0.2):
            return False, f"A monitor already runs at {ep.snapshots}; the panels use it"
        python, problem = monitor_python(p)
        if problem:
            return False, problem
        env = deps.child_environment(python)
        env.update(MD_HEALTH_EVENTS=ep.events, MD_HEALTH_SNAPSHOTS=ep.snapshots, MD_HEALTH_REQUESTS=ep.requests)
        try:
            roles = mon.start(python, env, str(deps.BACKEND_ROOT), _user_dir() / "monitor.log", deps.lifeline.spawn)
        except OSError as exc:
            mon.stop(wait=True, stop_one=deps.lifeline.stop)
            return False, f"Cannot start {python}: {exc}"
        rt.next_history = 0.0
        what = "the local monitor" if len(roles) == len(ROLES) else f"the local {' and '.join(roles)}"
        return True, f"Started {what}"
    finally:
        runtime.monitor_state(bpy.context.window_manager)


def stop_local(wait: bool = False) -> int:
    import bpy

    from . import deps, runtime, state

    n = state.RT.monitor.stop(wait, stop_one=deps.lifeline.stop if deps.lifeline else None)
    if bpy.context.window_manager is not None:
        runtime.monitor_state(bpy.context.window_manager)
    return n


def on_exit() -> None:
    """Quitting Blender does not unregister add-ons: stop our children here. (If Blender
    is killed instead, the children see their stdin lifeline close and stop themselves.)"""
    from . import deps, state

    state.RT.monitor.stop(wait=True, stop_one=deps.lifeline.stop if deps.lifeline else None)
