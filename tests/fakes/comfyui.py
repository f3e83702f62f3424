"""Fake ComfyUI serving the shapes of ComfyUI's server.py: /system_stats, /queue, /prompt,
/history and the /ws WebSocket (a `status` frame on connect and on every queue change).

Run it by hand for a demo:  .venv/bin/python -m tests.fakes.comfyui --port 8188
"""
from __future__ import annotations

import argparse
import json
import time
import uuid

from .base import FakeBackend, serve_forever
from .ws import WebSocketConnection


class FakeComfyUI(FakeBackend):
    version = "0.3.40"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.running: list[list] = []
        self.pending: list[list] = []
        self.history_items: dict[str, dict] = {}

    def set_queue(self, running: int, pending: int) -> None:
        item = lambda n: [n, f"prompt-{n}", {}, {"client_id": "x"}, []]  # noqa: E731
        self.running = [item(i) for i in range(running)]
        self.pending = [item(running + i) for i in range(pending)]
        self.broadcast_status()

    def add_finished_job(self, duration_ms: int, prompt_id: str | None = None, timestamps: bool = True) -> str:
        """Record a finished prompt in /history as execution.py does (ms timestamps on
        each status message in newer builds; older builds have none)."""
        prompt_id = prompt_id or str(uuid.uuid4())
        end = int(time.time() * 1000)
        start = end - duration_ms
        msg = lambda event, ts: [event, {"prompt_id": prompt_id, **({"timestamp": ts} if timestamps else {})}]  # noqa: E731
        self.history_items[prompt_id] = {
            "prompt": [len(self.history_items), prompt_id, {}, {"client_id": "x"}, ["9"]],
            "outputs": {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True,
                       "messages": [msg("execution_start", start), msg("execution_cached", start + 1),
                                    msg("execution_success", end)]},
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
            "devices": [{
                "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                "vram_total": 25_386_352_640, "vram_free": 23_000_000_000,
                "torch_vram_total": 0, "torch_vram_free": 0,
            }],
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
    }
    ws_routes = {"/ws": ws, "/api/ws": ws}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake ComfyUI for demos and tests")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--queue", type=int, default=0, help="pending prompts to show")
    args = parser.parse_args()
    fake = FakeComfyUI(args.port)
    fake.set_queue(0, args.queue)
    fake.add_finished_job(4200)
    serve_forever(fake, "ComfyUI")


if __name__ == "__main__":
    main()
