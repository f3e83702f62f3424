"""Portable parent/child process control without POSIX signals.

A parent starts a child with stdin=PIPE. The child calls `watch_stdin(stop)`: when the
parent closes the pipe (a clean stop) or dies (the OS closes it), the child's stop event
is set and it shuts down by itself. This works the same on Windows, macOS and Linux, and
leaves no orphans even when the parent is killed with kill -9.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


ENV_FLAG = "MD_HEALTH_LIFELINE"


def watch_stdin(stop: threading.Event) -> threading.Thread | None:
    """Set `stop` when stdin reaches EOF, but only in a child started by `spawn()`: a
    process run by hand, by a service manager or with `&` may have /dev/null as stdin."""
    stream = sys.stdin
    if os.environ.get(ENV_FLAG) != "1" or stream is None:
        return None

    def _wait() -> None:
        try:
            while stream.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    thread = threading.Thread(target=_wait, name="lifeline", daemon=True)
    thread.start()
    return thread


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a child tied to us by its stdin lifeline."""
    env = dict(kwargs.pop("env", None) or os.environ)
    env[ENV_FLAG] = "1"
    return subprocess.Popen(args, stdin=subprocess.PIPE, env=env, **kwargs)


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """Ask a lifeline child to stop by closing its stdin; kill it if it overstays `grace`."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.02)
    proc.kill()  # portable hard stop: TerminateProcess on Windows, SIGKILL elsewhere
    return proc.wait()
