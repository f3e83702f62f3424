"""ComfyUI probe: /system_stats for identity, devices and RAM, /queue for what runs and
waits, the job API (or /history on older builds) for job processing time and failed jobs,
and a held WebSocket on /ws for instant news.

Response shapes (ComfyUI server.py, execution.py, comfy_execution/jobs.py):
/system_stats -> {"system": {...}, "devices": [{"name", "type", "index", "vram_total",
"vram_free", "torch_vram_total", "torch_vram_free"}, ...]} (newer builds list every GPU,
the primary first); /queue -> {"queue_running": [...], "queue_pending": [...]};
/api/jobs?status=completed,failed&limit=N -> {"jobs": [{"id", "status" (pending |
in_progress | completed | failed), "create_time", "execution_start_time",
"execution_end_time" (ms), "execution_error", ...}], "pagination": {"offset", "limit",
"total", "has_more"}} on builds that have the job API (404 on older ones);
/history?max_items=N -> {prompt_id: {"status": {"status_str", "messages": [[event,
{"timestamp": ms, ...}], ...]}, ...}} (timestamps only in newer builds), which the job API
itself is built from; /ws sends {"type": "status", "data": {"status": {"exec_info":
{"queue_remaining": N}}, "sid": ...}} on connect and on every queue change, and closes the
instant ComfyUI dies.

The probe only reads: it never POSTs a prompt, so it never sends a prompt_id (newer
ComfyUI refuses one that is not a lowercase UUID). The WebSocket's clientId is a UUID of
its own and names only the socket.

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

HISTORY_ITEMS = 5  # finished jobs read at a time
HISTORY_EVERY = 30.0  # seconds; the jobs are also read whenever the queue shrinks
# While the WebSocket is held, ComfyUI announces every queue change on it (PromptServer.
# queue_updated broadcasts "status" from PromptQueue.put, get and task_done), so /queue is
# read again only after such news, or this often as a safety net; without it, every check.
QUEUE_EVERY = 30.0
MAX_DEVICES = 16
MAX_TEXT = 200  # characters of a name or error message a status carries
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
        self.ws = None  # the held connection; close() ends a blocked recv()

    def close(self) -> None:
        self.stop.set()
        ws = self.ws
        if ws is not None:
            ws.close()

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
                        self.ws = ws
                        delay = 0.5
                        out.send_json({"event": "open"})
                        # Blocks until a frame or the close; no timeout, so an idle
                        # connection never wakes this thread (close() unblocks it).
                        while not self.stop.is_set():
                            self._forward(out, ws.recv())
                except (OSError, TimeoutError, WebSocketException) as exc:
                    if self.stop.is_set():
                        pass  # close() ended it
                    elif held:
                        log.info("ComfyUI WebSocket closed (%s)", exc.__class__.__name__)
                    else:
                        log.debug("ComfyUI WebSocket not available (%s)", exc.__class__.__name__)
                self.ws = None
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


FINISHED = ("execution_success", "execution_error", "execution_interrupted")


def history_jobs(history: dict) -> list[dict]:
    """/history in the shape of /api/jobs' finished jobs, as comfy_execution/jobs.py's
    normalize_history_item builds it, so older builds are read the same way."""
    jobs = []
    for prompt_id, item in history.items() if isinstance(history, dict) else ():
        status = (item or {}).get("status") if isinstance(item, dict) else None
        status = status if isinstance(status, dict) else {}
        job = {"id": prompt_id, "status": "failed" if status.get("status_str") == "error" else "completed"}
        messages = status.get("messages")
        for entry in messages if isinstance(messages, list) else ():
            if not (isinstance(entry, (list, tuple)) and len(entry) >= 2 and isinstance(entry[1], dict)):
                continue
            event, data = entry[0], entry[1]
            if event == "execution_start":
                job["execution_start_time"] = data.get("timestamp")
            elif event in FINISHED:
                job["execution_end_time"] = data.get("timestamp")
                if event == "execution_error":
                    job["execution_error"] = data
        jobs.append(job)
    return jobs


def _ms(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def latest_job(jobs: list) -> dict | None:
    """The most recently finished job that has both execution times:
    {"id", "status", "ms", "error"} (error: ComfyUI's exception_message, bounded), else None."""
    best = None
    for job in jobs if isinstance(jobs, list) else ():
        if not isinstance(job, dict) or job.get("status") not in ("completed", "failed"):
            continue
        start, end = _ms(job.get("execution_start_time")), _ms(job.get("execution_end_time"))
        if start is None or end is None or end < start or (best is not None and end <= best[0]):
            continue
        err = job.get("execution_error")
        message = err.get("exception_message") if isinstance(err, dict) else None
        best = (end, {"id": str(job.get("id"))[:MAX_TEXT], "status": job["status"], "ms": end - start,
                      "error": message[:MAX_TEXT] if isinstance(message, str) else None})
    return best[1] if best else None


def failed_count(jobs: list) -> int:
    return sum(1 for j in jobs if isinstance(j, dict) and j.get("status") == "failed") if isinstance(jobs, list) else 0


def device_list(devices: list) -> list[dict]:
    """Contract C3: every device of /system_stats, primary first as ComfyUI lists them."""
    out = []
    for d in devices[:MAX_DEVICES]:
        if not isinstance(d, dict):
            continue
        index = d.get("index")
        out.append({
            "name": str(d.get("name", "?"))[:MAX_TEXT], "type": str(d.get("type", "?"))[:32],
            "index": index if isinstance(index, int) and not isinstance(index, bool) else None,
            "vram_total": _bytes(d.get("vram_total")), "vram_free": _bytes(d.get("vram_free")),
        })
    return out


def _bytes(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


class ComfyUIProbe(Probe):
    kind = "comfyui"
    hint = "Start it with python main.py in your ComfyUI folder."

    def __init__(self, service: str, settings: dict) -> None:
        super().__init__(service, settings)
        self.watcher: SocketWatcher | None = None
        self.ws_connected = False
        self.ws_queue_remaining: int | None = None
        self._last_depth: int | None = None
        self._queue: dict | None = None  # the last /queue answer
        self._queue_at = 0.0
        self._queue_news = True  # the WebSocket said something since that answer (or nothing held)
        self._history_at = 0.0
        self._job: dict | None = None  # the latest finished job with times
        self._failed: int | None = None  # failed among the last HISTORY_ITEMS finished
        self._jobs_api: bool | None = None  # None: not known yet (asked again after a failure)

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
            self._queue_news = True  # open, closed, status, execution: the queue may differ
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
            self.watcher.close()
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
            q = self._read_queue(result)
        except ProbeError as exc:
            self._last_depth = None
            self._queue = None
            self._jobs_api = None  # what comes back may be another build
            return self.fail(exc, result)

        running = q.get("queue_running")
        pending = q.get("queue_pending")
        running = running if isinstance(running, list) else []
        pending = pending if isinstance(pending, list) else []
        depth = len(running) + len(pending)
        devices = device_list(data["devices"])
        self._read_history(result, depth)
        job = self._job
        vram_used = None
        sized = [d for d in devices if d["vram_total"] is not None and d["vram_free"] is not None
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
            "queue_waiting": len(pending),
            "queue_depth": depth,
            "job_time_ms": job["ms"] if job else None,
            "last_job_id": job["id"] if job else None,
            "last_job_status": job["status"] if job else None,
            "last_job_error": job["error"] if job else None,
            "recent_failed_jobs": self._failed,
            "jobs_api": self._jobs_api,
            "websocket": self.ws_connected,
            "resources": self.usage(vram_used),
        }
        return result

    def _read_queue(self, result: CheckResult) -> dict:
        now = time.monotonic()
        if self.ws_connected and not self._queue_news and self._queue is not None \
                and now - self._queue_at < QUEUE_EVERY:
            return self._queue
        # Cleared before the request: news arriving while it runs marks the answer stale again.
        self._queue_news = False
        queue = self.timed_get(result, "/queue")
        if queue.status != 200:
            raise ProbeError("http_status", f"{self.url}/queue answered HTTP {queue.status}", queue.status)
        q = queue.json()
        if not isinstance(q, dict):
            raise ProbeError("wrong_service", f"{self.url}/queue is not a ComfyUI queue")
        self._queue, self._queue_at = q, now
        return q

    def _read_history(self, result: CheckResult, depth: int) -> None:
        """Finished jobs, read when one may have finished (the queue shrank) or now and
        then: from /api/jobs where the build has it, else from /history, which is the only
        other place a passive client sees execution times."""
        now = time.monotonic()
        due = self._last_depth is None or depth < self._last_depth or now - self._history_at > HISTORY_EVERY
        self._last_depth = depth
        if not due:
            return
        self._history_at = now
        try:
            jobs = None
            if self._jobs_api is not False:
                resp = self.timed_get(result, f"/api/jobs?status=completed,failed&limit={HISTORY_ITEMS}")
                body = resp.json() if resp.status == 200 else None
                if isinstance(body, dict) and isinstance(body.get("jobs"), list):
                    self._jobs_api, jobs = True, body["jobs"]
                elif resp.status == 404:
                    self._jobs_api = False  # an older build: /history from now on
            if jobs is None:  # no job API, or it answered oddly this time
                resp = self.timed_get(result, f"/history?max_items={HISTORY_ITEMS}")
                if resp.status == 200:
                    jobs = history_jobs(resp.json())
            if jobs is not None:
                self._failed = failed_count(jobs[:HISTORY_ITEMS])
                found = latest_job(jobs)
                if found is not None:
                    self._job = found
        except ProbeError:
            pass  # job times are a nicety; the service is judged by /system_stats and /queue
