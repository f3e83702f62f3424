"""Fake ComfyUI serving the shapes of ComfyUI's server.py (/system_stats, /queue, /prompt).

Run it by hand for a demo:  .venv/bin/python -m tests.fakes.comfyui --port 8188
"""
from __future__ import annotations

import argparse
import time

from .base import FakeBackend


class FakeComfyUI(FakeBackend):
    version = "0.3.40"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.running: list[list] = []
        self.pending: list[list] = []

    def set_queue(self, running: int, pending: int) -> None:
        item = lambda n: [n, f"prompt-{n}", {}, {"client_id": "x"}, []]  # noqa: E731
        self.running = [item(i) for i in range(running)]
        self.pending = [item(running + i) for i in range(pending)]

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
        return {"exec_info": {"queue_remaining": len(self.running) + len(self.pending)}}

    routes = {
        "/system_stats": system_stats, "/api/system_stats": system_stats,
        "/queue": queue, "/api/queue": queue,
        "/prompt": prompt, "/api/prompt": prompt,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake ComfyUI for demos and tests")
    parser.add_argument("--port", type=int, default=8188)
    args = parser.parse_args()
    with FakeComfyUI(args.port) as fake:
        print(f"fake ComfyUI on {fake.url} (Ctrl+C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
