"""ComfyUI probe: /system_stats for identity, devices and RAM, /queue for depth, /history
for job processing time, and a held WebSocket on /ws for instant news.

Response shapes (ComfyUI server.py, execution.py): /system_stats -> {"system": {...},
"devices": [...]}; /queue -> {"queue_running": [...], "queue_pending": [...]};
/history?max_items=N -> {prompt_id: {"status": {"messages": [[event, {"timestamp": ms,
...}], ...]}, ...}} (timestamps only in newer builds); /ws sends {"type": "status",
"data": {"status": {"exec_info": {"queue_remaining": N}}, "sid": ...}} on connect and on
every queue change, and closes the instant ComfyUI dies.

The socket lives in a thread of its own (the `websockets` sync client blocks) and talks to
the probe loop only through an inproc PAIR socket, because zmq sockets are not
thread-safe. If the socket cannot be held, polling alone still does the job.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid

import zmq

from .base import MAX_BACKOFF, CheckResult, Probe
from .http import ProbeError

log = logging.getLogger("probes.comfyui")

HISTORY_ITEMS = 5
HISTORY_EVERY = 30.0  # seconds; /history is also read whenever the queue shrinks
_pair_ids = itertools.count()


class SocketWatcher(threading.Thread):
    """Holds ComfyUI's /ws and forwards what matters as small JSON messages:
    {"event": "open"}, {"event": "closed"}, {"event": "status", "queue_remaining": N},
    {"event": "execution", "type": ..., "data": ...}. Reconnects with exponential backoff."""

    def __init__(self, ws_url: str, ctx: zmq.Context, endpoint: str, timeout: float) -> None:
        super().__init__(name="comfyui-ws", daemon=True)
        self.ws_url = ws_url
        self.ctx = ctx
        self.endpoint = endpoint
        self.timeout = timeout
        self.stop = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        out = self.ctx.socket(zmq.PAIR)
        out.linger = 0
        out.connect(self.endpoint)
        delay = 0.5
        try:
            while not self.stop.is_set():
                held = False
                try:
                    with connect(self.ws_url, open_timeout=self.timeout, close_timeout=0.5,
                                 max_size=8 << 20, ping_interval=10, ping_timeout=10) as ws:
                        held = True
                        delay = 0.5
                        out.send_json({"event": "open"})
                        while not self.stop.is_set():
                            try:
                                raw = ws.recv(timeout=0.5)
                            except TimeoutError:
                                continue
                            self._forward(out, raw)
                except (OSError, TimeoutError, WebSocketException) as exc:
                    if held:
                        log.info("ComfyUI WebSocket closed (%s)", exc.__class__.__name__)
                    else:
                        log.debug("ComfyUI WebSocket not available (%s)", exc.__class__.__name__)
                if held and not self.stop.is_set():
                    out.send_json({"event": "closed"})
                self.stop.wait(delay)
                delay = min(MAX_BACKOFF, delay * 2)
        except zmq.ZMQError:  # the context is being torn down
            pass
        finally:
            out.close(linger=0)

    @staticmethod
    def _forward(out: zmq.Socket, raw) -> None:
        if isinstance(raw, bytes):  # preview images: only sent to the submitting client anyway
            return
        try:
            frame = json.loads(raw)
            kind, data = frame.get("type"), frame.get("data") or {}
        except (ValueError, AttributeError):
            return
        if kind == "status":
            remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            out.send_json({"event": "status", "queue_remaining": remaining})
        elif isinstance(kind, str) and kind.startswith("execution_"):
            out.send_json({"event": "execution", "type": kind, "data": data})


def job_time(history: dict) -> tuple[str | None, float | None]:
    """(prompt_id, ms) of the most recently finished job with timestamps, else (None, None)."""
    best: tuple[float, str, float] | None = None
    for prompt_id, item in history.items() if isinstance(history, dict) else ():
        messages = ((item or {}).get("status") or {}).get("messages") or []
        start = end = None
        for entry in messages:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
                continue
            event, ts = entry[0], entry[1].get("timestamp")
            if not isinstance(ts, (int, float)):
                continue
            if event == "execution_start":
                start = ts
            elif event in ("execution_success", "execution_error", "execution_interrupted"):
                end = ts
        if start is not None and end is not None and end >= start and (best is None or end > best[0]):
            best = (end, prompt_id, float(end - start))
    return (best[1], best[2]) if best else (None, None)


class ComfyUIProbe(Probe):
    kind = "comfyui"
    hint = "Start it with `python main.py` in your ComfyUI folder."

    def __init__(self, service: str, settings: dict) -> None:
        super().__init__(service, settings)
        self.watcher: SocketWatcher | None = None
        self.ws_connected = False
        self.ws_queue_remaining: int | None = None
        self._last_depth: int | None = None
        self._history_at = 0.0
        self._job: tuple[str | None, float | None] = (None, None)

    @property
    def display_name(self) -> str:
        return "ComfyUI"

    # -- the WebSocket side ---------------------------------------------------------
    def open_watch(self, ctx):
        if not self.settings.get("websocket", True) or not self.url:
            return None
        endpoint = f"inproc://comfyui-ws-{id(self)}-{next(_pair_ids)}"
        sock = ctx.socket(zmq.PAIR)
        sock.linger = 0
        sock.bind(endpoint)
        ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={uuid.uuid4()}"
        self.watcher = SocketWatcher(ws_url, ctx, endpoint, self.timeout)
        self.watcher.start()
        return sock

    def on_watch(self, sock) -> bool:
        check_now = False
        while True:
            try:
                msg = sock.recv_json(zmq.NOBLOCK)
            except zmq.Again:
                return check_now
            except ValueError:
                continue
            event = msg.get("event")
            if event == "open":
                self.ws_connected = True
                check_now = True  # back up: confirm recovery at once instead of after the backoff
            elif event == "closed":
                self.ws_connected = False
                check_now = True  # ComfyUI probably died: find out now, not at the next poll
            elif event == "status":
                self.ws_queue_remaining = msg.get("queue_remaining")
                check_now = True
            elif event == "execution":
                check_now = True

    def close_watch(self) -> None:
        if self.watcher is not None:
            self.watcher.stop.set()
            self.watcher.join(timeout=2.0)

    # -- the poll -------------------------------------------------------------------
    def check(self) -> CheckResult:
        result = CheckResult(False)
        try:
            stats = self.timed_get(result, "/system_stats")
            if stats.status == 404:
                raise ProbeError("wrong_service", f"{self.url} has no /system_stats: the app on this port is not "
                                 "ComfyUI; check services.comfyui.url", 404)
            if stats.status != 200:
                raise ProbeError("http_status", f"{self.url}/system_stats answered HTTP {stats.status}; "
                                 "ComfyUI may be starting or failing, see its console", stats.status)
            data = stats.json()
            system = data.get("system") if isinstance(data, dict) else None
            if not isinstance(system, dict) or not isinstance(data.get("devices"), list):
                raise ProbeError("wrong_service", f"{self.url} answered /system_stats, but not as ComfyUI does "
                                 "(no system/devices); is another app on this port?")
            queue = self.timed_get(result, "/queue")
            if queue.status != 200:
                raise ProbeError("http_status", f"{self.url}/queue answered HTTP {queue.status}", queue.status)
            q = queue.json()
            if not isinstance(q, dict):
                raise ProbeError("wrong_service", f"{self.url}/queue is not a ComfyUI queue")
        except ProbeError as exc:
            self._last_depth = None
            return self.fail(exc, result)

        running = q.get("queue_running") or []
        pending = q.get("queue_pending") or []
        depth = len(running) + len(pending)
        devices = [
            {"name": d.get("name", "?"), "type": d.get("type", "?"),
             "vram_total": d.get("vram_total"), "vram_free": d.get("vram_free")}
            for d in data["devices"] if isinstance(d, dict)
        ]
        self._read_history(result, depth)
        vram_used = None
        sized = [d for d in devices if isinstance(d["vram_total"], int) and isinstance(d["vram_free"], int)
                 and d["type"] != "cpu"]
        if sized:
            vram_used = sum(d["vram_total"] - d["vram_free"] for d in sized)
        result.healthy = True
        result.version = str(system.get("comfyui_version") or "unknown")
        result.capabilities = ["images", "workflows"]
        result.details = {
            "python_version": system.get("python_version"),
            "pytorch_version": system.get("pytorch_version"),
            "os": system.get("os"),
            "ram_total": system.get("ram_total"),
            "ram_free": system.get("ram_free"),
            "devices": devices,
            "queue_running": len(running),
            "queue_pending": len(pending),
            "queue_depth": depth,
            "job_time_ms": self._job[1],
            "last_job_id": self._job[0],
            "websocket": self.ws_connected,
            "resources": self.usage(vram_used),
        }
        return result

    def _read_history(self, result: CheckResult, depth: int) -> None:
        """Job time from /history, read when a job may have finished (the queue shrank) or
        now and then; it is the only place a passive client sees execution timestamps."""
        now = time.monotonic()
        due = self._last_depth is None or depth < self._last_depth or now - self._history_at > HISTORY_EVERY
        self._last_depth = depth
        if not due:
            return
        self._history_at = now
        try:
            resp = self.timed_get(result, f"/history?max_items={HISTORY_ITEMS}")
            if resp.status == 200:
                found = job_time(resp.json())
                if found[0] is not None:
                    self._job = found
        except ProbeError:
            pass  # job time is a nicety; the service is judged by /system_stats and /queue
