"""*Find Backends*: `python -m aggregator discover --json` as a child of Blender, with the
local monitor's interpreter and environment, polled from the timer (never waited for).

The child writes its one JSON object to a temporary file (a pipe could fill and stall
it); when it exits, the object is read, bounded and kept here for the panel. A child
that overstays TIMEOUT is killed. Nothing here runs in draw().
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time

IDLE, RUNNING, DONE, FAILED = "idle", "running", "done", "failed"
TIMEOUT = 60.0          # seconds a scan may take (loopback only: a few seconds at most)
MAX_BYTES = 256 * 1024  # of the child's output that is read
MAX_FOUND = 50
MAX_TEXT = 200


class Discovery:
    def __init__(self) -> None:
        self.state = IDLE
        self.proc: subprocess.Popen | None = None
        self.deadline = 0.0
        self.writing = False
        self.found: list[dict[str, str]] = []
        self.scanned = 0
        self.written = ""
        self.error = ""
        self._out = self._err = None

    def start(self, python: str, env: dict[str, str], cwd: str, write: bool = False) -> None:
        """Start a scan (with `write`, one that also updates the config). Raises OSError."""
        self.stop()
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        argv = [python, "-m", "aggregator", "discover", "--json"] + (["--write"] if write else [])
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.deadline = time.monotonic() + TIMEOUT
        self.writing = write
        self.state = RUNNING
        self.error = ""

    def poll(self) -> bool:
        """Called by the timer: True when the scan has just finished (or was killed)."""
        if self.proc is None:
            return False
        code = self.proc.poll()
        if code is None:
            if time.monotonic() < self.deadline:
                return False
            self.proc.kill()
            self.proc.wait(2)
            self._finish(None, f"The scan took longer than {TIMEOUT:.0f} s and was stopped")
            return True
        self._out.seek(0)
        self._err.seek(0)
        out = self._out.read(MAX_BYTES).decode("utf-8", "replace")
        err = self._err.read(MAX_BYTES).decode("utf-8", "replace").strip()
        self._finish(*parse(out, err, code))
        return True

    def _finish(self, reply: dict | None, error: str) -> None:
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        self.proc = self._out = self._err = None
        if reply is not None:
            self.found, self.scanned, self.written = reply["found"], reply["scanned"], reply["written"]
        elif not self.writing:
            self.found, self.scanned, self.written = [], 0, ""
        self.error = error
        self.state = FAILED if error else DONE

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(2)
        if self.proc is not None:
            self._finish(None, "")
        self.state = IDLE


def _text(v) -> str:
    return str(v if v is not None else "")[:MAX_TEXT]


def parse(out: str, err: str, code: int) -> tuple[dict | None, str]:
    """The child's reply, bounded, and an error in words ("" if none)."""
    last = err.splitlines()[-1][:MAX_TEXT] if err else ""
    try:
        data = json.loads(out) if out.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        why = last or f"exit code {code}"
        return None, f"Find Backends failed: {why}"
    found = []
    for item in (data.get("found") if isinstance(data.get("found"), list) else [])[:MAX_FOUND]:
        if isinstance(item, dict):
            found.append({k: _text(item.get(k)) for k in ("kind", "service", "url", "title", "version", "detail")})
    scanned = data.get("scanned")
    reply = {"found": found, "scanned": scanned if isinstance(scanned, int) and not isinstance(scanned, bool) else 0,
             "written": _text(data.get("written")) if data.get("written") else ""}
    error = _text(data.get("error")) if data.get("error") else ("" if code == 0 else last or f"exit code {code}")
    return reply, error


def line(item: dict[str, str]) -> str:
    """One found backend in words: "ComfyUI 0.3.64 at http://127.0.0.1:8188 (comfyui)"."""
    name = item.get("title") or item.get("kind") or "?"
    version = f" {item['version']}" if item.get("version") else ""
    service = f" (for {item['service']})" if item.get("service") else ""
    return f"{name}{version} at {item.get('url') or '?'}{service}"
