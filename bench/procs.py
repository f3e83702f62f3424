"""Real processes on free loopback ports, exactly as production starts them.

The aggregator runs as `python -m aggregator run`, probes as `python -m probes run ...`,
fake backends as `python -m tests.fakes.<name>`. Each child gets its own config and data
directory (so a user's real config or history never leaks into a figure) and is tied to
us by the stdin lifeline, so an interrupted bench leaves no orphans.
"""
from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bus.client import MonitorClient
from bus.lifeline import spawn, stop as stop_child
from bus.sockets import Endpoints
from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # scratch: logs, temp configs (git-ignored)


def free_endpoints() -> Endpoints:
    return Endpoints.on_ports(free_port(), free_port(), free_port())


class Procs:
    """Starts children with a shared isolated environment and stops them all on exit."""

    def __init__(self, name: str, endpoints: Endpoints | None = None, config: str = "") -> None:
        self.endpoints = endpoints or free_endpoints()
        self.dir = OUT / "run" / f"{name}-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(config, encoding="utf-8")
        self.children: list[subprocess.Popen] = []
        # No user overrides, and no real provider credentials or hosts: every byte a bench
        # child sends stays on loopback, to our fakes.
        self.env = {k: v for k, v in os.environ.items()
                    if not (k.startswith("MD_HEALTH_") and k.endswith("_URL")) and not k.endswith("_API_KEY")
                    and not k.endswith("_BASE_URL") and not k.startswith(("AZURE_", "OPENAI_", "ANTHROPIC_"))
                    and k != "OLLAMA_HOST"}
        self.env.update({
            "MD_HEALTH_CONFIG": str(self.dir / "config.toml"),
            "MD_HEALTH_DATA_DIR": str(self.dir / "data"),
            "MD_HEALTH_EVENTS": self.endpoints.events,
            "MD_HEALTH_SNAPSHOTS": self.endpoints.snapshots,
            "MD_HEALTH_REQUESTS": self.endpoints.requests,
            "PYTHONPATH": str(ROOT),
        })

    def start(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}-{len(self.children)}.log", "w")
        proc = spawn([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        log.close()  # the child holds its own handle
        proc.log_path = self.dir / f"{name}-{len(self.children)}.log"  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def aggregator(self) -> subprocess.Popen:
        return self.start("-m", "aggregator", "run", name="aggregator")

    def probe(self, service: str, *extra: str) -> subprocess.Popen:
        return self.start("-m", "probes", "run", service, *extra, name=f"probe-{service}")

    def fake(self, module: str, port: int, *extra: str) -> subprocess.Popen:
        proc = self.start("-m", f"tests.fakes.{module}", "--port", str(port), *extra, name=f"fake-{module}")
        proc.hard_stop = True  # type: ignore[attr-defined]  # a fake needs no clean stop, and may not watch stdin
        return proc


    def client(self, name: str = "bench") -> MonitorClient:
        return MonitorClient(self.endpoints, name=name)

    def wait_synced(self, client: MonitorClient, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client.poll(timeout_ms=50)
            if client.has_snapshot:
                return
            self.check_alive()
        raise RuntimeError(f"the aggregator did not answer a snapshot request within {timeout:g} s")

    def check_alive(self) -> None:
        for proc in self.children:
            if proc.poll() is not None and not getattr(proc, "expected_exit", False):
                tail = Path(proc.log_path).read_text(errors="replace")[-1500:]  # type: ignore[attr-defined]
                raise RuntimeError(f"{' '.join(proc.args[1:4])} exited with code {proc.returncode}:\n{tail}")

    def stop(self, proc: subprocess.Popen, hard: bool = False) -> None:
        proc.expected_exit = True  # type: ignore[attr-defined]
        if hard:
            proc.kill()
            proc.wait()
        else:
            stop_child(proc, grace=3.0)

    def close(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                self.stop(proc, hard=getattr(proc, "hard_stop", False))

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if exc_type is None:  # keep logs and configs only when something went wrong
            shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(proc) -> float:
    """CPU time (user + system) of a psutil.Process so far. On Linux from the scheduler's
    nanosecond counters of every thread (/proc/PID/task/*/schedstat); psutil's cpu_times
    count 10 ms ticks, too coarse for an idle process measured over seconds."""
    task_dir = Path(f"/proc/{proc.pid}/task")
    if task_dir.is_dir():
        total, read = 0, 0
        try:
            for tid in os.listdir(task_dir):
                try:
                    total += int((task_dir / tid / "schedstat").read_text().split()[0])
                    read += 1
                except (OSError, ValueError, IndexError):
                    pass  # a thread that just ended
        except OSError:
            pass
        if read:
            return total / 1e9
    times = proc.cpu_times()
    return times.user + times.system


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class CountingProxy:
    """A TCP relay that counts connections and bytes each way, so the load a probe puts on a
    backend is measured on the wire, whatever the protocol (HTTP polls or a held WebSocket)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.bytes_up = 0  # probe -> backend
        self.bytes_down = 0  # backend -> probe
        self.requests = 0  # HTTP requests: client chunks that start with a method (WebSocket frames never do)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[int, int, int, int]:
        with self._lock:
            return self.connections, self.bytes_up, self.bytes_down, self.requests

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=2.0)
        except OSError:
            client.close()  # backend down: the probe sees a closed connection
            return
        pairs = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pairs[sock].sendall(data)
                    with self._lock:
                        if sock is client:
                            self.bytes_up += len(data)
                            if data.startswith(HTTP_METHODS):
                                self.requests += 1
                        else:
                            self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


# The fake (module and arguments) that stands in for each default service, by flavour.
FAKES = {
    "comfyui": ("comfyui", ()),
    "wan2gp": ("gradio", ("--app", "wan2gp")),
    "webui": ("gradio", ("--app", "rvc")),
    "audioldm": ("gradio", ("--app", "audioldm")),
    "rvc-python": ("rvc_python", ()),
    "llm": ("llm", ("--provider", "ollama")),
}


def fake_for(settings: dict) -> tuple[str, tuple[str, ...]] | None:
    """The fake for a service's flavour, if both it and the flavour's probe exist in the tree."""
    flavour = settings.get("flavour", "")
    found = FAKES.get(flavour)
    if found is None or not (ROOT / "tests" / "fakes" / f"{found[0]}.py").exists():
        return None
    try:
        from probes.registry import make_probe

        make_probe("bench", {**settings, "url": settings.get("url") or "http://127.0.0.1:1"})
    except Exception:  # no probe for this flavour yet
        return None
    return found
