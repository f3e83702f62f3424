"""Fake ComfyUI serving the shapes of ComfyUI's server.py: /system_stats (one device, or
every GPU primary first as newer builds list them), /queue, /prompt, /history, the job API
of newer builds (/api/jobs, /api/jobs/{id}, built from the queue and history as
comfy_execution/jobs.py builds it; absent with jobs_api=False, as before v0.6) and the /ws
WebSocket (a `status` frame on connect and on every queue change).

Every request's path and query is kept in `requests`, so a test can check what a client sent.

Run it by hand for a demo:  .venv/bin/python -m tests.fakes.comfyui --port 8188
"""
from __future__ import annotations

import argparse
import json
import time
import uuid

from .base import FakeBackend, serve_forever
from .ws import WebSocketConnection


RTX_4090 = {"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
            "vram_total": 25_386_352_640, "vram_free": 23_000_000_000, "torch_vram_total": 0, "torch_vram_free": 0}
RTX_3090 = {"name": "cuda:1 NVIDIA GeForce RTX 3090 : cudaMallocAsync", "type": "cuda", "index": 1,
            "vram_total": 25_769_279_488, "vram_free": 12_000_000_000, "torch_vram_total": 0, "torch_vram_free": 0}


class FakeComfyUI(FakeBackend):
    def __init__(self, port: int = 0, *, jobs_api: bool = True, devices: list[dict] | None = None) -> None:
        super().__init__(port)
        self.jobs_api = jobs_api
        self.version = "0.26.0" if jobs_api else "0.3.40"
        self.devices = [dict(d) for d in (devices or [RTX_4090])]
        self.running: list[list] = []
        self.pending: list[list] = []
        self.history_items: dict[str, dict] = {}
        self.requests: list[str] = []

    def _handle(self, handler) -> None:
        self.requests.append(handler.path)
        path, sep, query = handler.path.partition("?")
        if path.startswith("/api/jobs/") and path.count("/") == 3:  # the one route with a path parameter
            handler.path = "/api/jobs/{job_id}?" + "&".join(filter(None, [f"job_id={path[10:]}", query]))
        super()._handle(handler)

    def set_queue(self, running: int, pending: int) -> None:
        now = int(time.time() * 1000)
        item = lambda n: [n, str(uuid.uuid4()), {}, {"client_id": "x", "create_time": now}, []]  # noqa: E731
        self.running = [item(i) for i in range(running)]
        self.pending = [item(running + i) for i in range(pending)]
        self.broadcast_status()

    def add_finished_job(self, duration_ms: int, prompt_id: str | None = None, timestamps: bool = True,
                         error: str | None = None, ago_ms: int = 0) -> str:
        """Record a finished prompt in /history as execution.py does (ms timestamps on
        each status message in newer builds; older builds have none). With `error`, the
        prompt failed in node 9 with that exception message. It ended `ago_ms` ago."""
        prompt_id = prompt_id or str(uuid.uuid4())
        end = int(time.time() * 1000) - ago_ms
        start = end - duration_ms
        stamp = lambda ts: {"timestamp": ts} if timestamps else {}  # noqa: E731
        msg = lambda event, ts, **kw: [event, {"prompt_id": prompt_id, **kw, **stamp(ts)}]  # noqa: E731
        if error is None:
            last, status_str = msg("execution_success", end), "success"
        else:
            status_str = "error"
            last = msg("execution_error", end, node_id="9", node_type="SaveImage", executed=["4"],
                       exception_message=error, exception_type="RuntimeError", traceback=["..."],
                       current_inputs={}, current_outputs={})
        self.history_items[prompt_id] = {
            "prompt": [len(self.history_items), prompt_id, {}, {"client_id": "x", "create_time": start - 5}, ["9"]],
            "outputs": {} if error else {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "",
                                                              "type": "output"}]}},
            "status": {"status_str": status_str, "completed": error is None,
                       "messages": [msg("execution_start", start), msg("execution_cached", start + 1), last]},
            "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}},
        }
        return prompt_id

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.running) + len(self.pending)}}

    def broadcast_status(self) -> None:
        for ws in list(self.websockets):
            ws.send_text(json.dumps({"type": "status", "data": {"status": self.queue_info()}}))

    # -- routes -------------------------------------------------------------------
    def system_stats(self, params):
        return {
            "system": {
                "os": "posix", "ram_total": 33_554_432_000, "ram_free": 20_000_000_000,
                "comfyui_version": self.version, "python_version": "3.11.9 (main) [GCC 12.2.0]",
                "pytorch_version": "2.5.1+cu124", "embedded_python": False, "argv": ["main.py"],
                "required_frontend_version": "1.23.4",
            },
            "devices": self.devices,
        }

    def queue(self, params):
        return {"queue_running": self.running, "queue_pending": self.pending}

    def prompt(self, params):
        return self.queue_info()

    def history(self, params):
        items = list(self.history_items.items())
        if "max_items" in params:
            items = items[-int(params["max_items"]):]
        return dict(items)

    # -- the job API (comfy_execution/jobs.py normalize_queue_item / normalize_history_item,
    # with None values pruned as prune_dict does) -------------------------------------
    @staticmethod
    def _pruned(d: dict) -> dict:
        return {k: v for k, v in d.items() if v is not None}

    def _queue_job(self, item: list, status: str) -> dict:
        return self._pruned({"id": item[1], "status": status, "priority": item[0],
                             "create_time": item[3].get("create_time"), "outputs_count": 0})

    def _history_job(self, prompt_id: str, item: dict) -> dict:
        status = item["status"]
        job = {"id": prompt_id, "status": "failed" if status["status_str"] == "error" else "completed",
               "priority": item["prompt"][0], "create_time": item["prompt"][3].get("create_time"),
               "outputs_count": sum(len(v) for o in item["outputs"].values() for v in o.values())}
        for event, data in status["messages"]:
            if event == "execution_start":
                job["execution_start_time"] = data.get("timestamp")
            elif event in ("execution_success", "execution_error", "execution_interrupted"):
                job["execution_end_time"] = data.get("timestamp")
                if event == "execution_error":
                    job["execution_error"] = data
        return self._pruned(job)

    def jobs(self, params):
        if not self.jobs_api:
            return 404, {"detail": "Not Found"}
        wanted = params.get("status", "pending,in_progress,completed,failed").replace("%2C", ",").split(",")
        if any(w not in ("pending", "in_progress", "completed", "failed") for w in wanted):
            return 400, {"error": "Invalid status"}
        jobs = [self._queue_job(i, "in_progress") for i in self.running]
        jobs += [self._queue_job(i, "pending") for i in self.pending]
        jobs += [self._history_job(k, v) for k, v in self.history_items.items()]
        jobs = sorted((j for j in jobs if j["status"] in wanted), key=lambda j: j.get("create_time", 0), reverse=True)
        offset, limit = max(0, int(params.get("offset", 0))), params.get("limit")
        page = jobs[offset:][:int(limit)] if limit is not None else jobs[offset:]
        return {"jobs": page, "pagination": {"offset": offset, "limit": int(limit) if limit else None,
                                             "total": len(jobs), "has_more": offset + len(page) < len(jobs)}}

    def job(self, params):
        job_id = params["job_id"]
        if not self.jobs_api:
            return 404, {"detail": "Not Found"}
        if job_id in self.history_items:
            item = self.history_items[job_id]
            return {**self._history_job(job_id, item), "outputs": item["outputs"], "execution_status": item["status"],
                    "workflow": {"prompt": item["prompt"][2], "extra_data": item["prompt"][3]}}
        for items, status in ((self.running, "in_progress"), (self.pending, "pending")):
            for i in items:
                if i[1] == job_id:
                    return self._queue_job(i, status)
        return 404, {"error": "Job not found"}

    def ws(self, handler, params):
        conn = WebSocketConnection.accept(handler)
        sid = params.get("clientId") or uuid.uuid4().hex
        self.websockets.append(conn)
        conn.send_text(json.dumps({"type": "status", "data": {"status": self.queue_info(), "sid": sid}}))
        conn.serve()
        if conn in self.websockets:
            self.websockets.remove(conn)

    routes = {
        "/system_stats": system_stats, "/api/system_stats": system_stats,
        "/queue": queue, "/api/queue": queue,
        "/prompt": prompt, "/api/prompt": prompt,
        "/history": history, "/api/history": history,
        "/api/jobs": jobs, "/api/jobs/{job_id}": job,
    }

    ws_routes = {"/ws": ws, "/api/ws": ws}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake ComfyUI for demos and tests")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--queue", type=int, default=0, help="pending prompts to show")
    parser.add_argument("--gpus", type=int, choices=(1, 2), default=1, help="GPUs in /system_stats")
    parser.add_argument("--old", action="store_true", help="an older build: no /api/jobs")
    args = parser.parse_args()
    fake = FakeComfyUI(args.port, jobs_api=not args.old, devices=[RTX_4090, RTX_3090][:args.gpus])
    fake.set_queue(0, args.queue)
    fake.add_finished_job(3100, error="CUDA out of memory. Tried to allocate 2.00 GiB", ago_ms=60_000)
    fake.add_finished_job(4200)
    serve_forever(fake, "ComfyUI")


if __name__ == "__main__":
    main()
