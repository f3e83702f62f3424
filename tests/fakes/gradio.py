"""Fake Gradio apps in the shapes of Gradio 3 (RVC WebUI, AudioLDM) and Gradio 5 (Wan2GP):
/config at the root, then /info + /queue/status (3.x) or /gradio_api/info +
/gradio_api/queue/status (5.x). Any title can be served, to play the wrong app on a port.

Run one by hand:  .venv/bin/python -m tests.fakes.gradio --app wan2gp --port 7860
"""
from __future__ import annotations

import argparse

from .base import FakeBackend, serve_forever

APPS = {
    # app: (gradio version, title, named endpoints, a line of UI text)
    "wan2gp": ("5.29.0", "WanGP", ["generate_video", "refresh_gallery", "abort"], "WanGP by DeepBeepMeep"),
    "rvc": ("3.34.0", "RVC WebUI", ["infer_refresh", "infer_convert", "train_index"], "## RVC WebUI"),
    "audioldm": ("3.23.0", "Gradio", ["text2audio"], "AudioLDM: Text-to-Audio Generation"),
    "other": ("4.44.1", "Stable Diffusion", ["txt2img"], "Some other app"),
}


class FakeGradio(FakeBackend):
    def __init__(self, app: str = "wan2gp", port: int = 0, *, version: str | None = None,
                 title: str | None = None) -> None:
        super().__init__(port)
        gv, t, endpoints, text = APPS[app]
        self.gradio_version = version or gv
        self.title = t if title is None else title
        self.endpoints = endpoints
        self.ui_text = text
        self.queue_size = 0
        self.major = int(self.gradio_version.split(".")[0])
        prefix = "/gradio_api" if self.major >= 5 else ""
        self.routes = {"/config": FakeGradio.config, prefix + "/info": FakeGradio.info,
                       prefix + "/queue/status": FakeGradio.queue_status}

    def config(self, params):
        cfg = {
            "version": self.gradio_version + ("\n" if self.major == 3 else ""),  # 3.x read it from a file
            "mode": "blocks", "dev_mode": False, "analytics_enabled": False,
            "components": [{"id": 1, "type": "markdown", "props": {"value": self.ui_text, "visible": True}}],
            "title": self.title, "is_space": False, "enable_queue": True, "show_error": False,
            "show_api": True, "is_colab": False, "theme": "default", "app_id": 123456789,
            "layout": {"id": 0, "children": [{"id": 1}]}, "dependencies": [],
        }
        if self.major >= 4:
            cfg["protocol"] = "sse_v3"
        if self.major >= 5:
            cfg["api_prefix"] = "/gradio_api"
        return cfg

    def info(self, params):
        named = {f"/{name}": {"parameters": [{"label": "prompt", "type": {"type": "string"},
                                              "python_type": {"type": "str", "description": ""},
                                              "component": "Textbox", "example_input": "Hello!!"}],
                              "returns": [{"label": "output", "type": {"type": "string"},
                                           "python_type": {"type": "str", "description": ""},
                                           "component": "Textbox"}]}
                 for name in self.endpoints}
        return {"named_endpoints": named, "unnamed_endpoints": {}}

    def queue_status(self, params):
        if self.major == 3:
            return {"msg": "estimation", "rank": None, "queue_size": self.queue_size,
                    "avg_event_process_time": 12.5, "avg_event_concurrent_process_time": 12.5,
                    "rank_eta": None, "queue_eta": self.queue_size * 12.5}
        return {"msg": "estimation", "event_id": None, "rank": None, "queue_size": self.queue_size, "rank_eta": None}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Gradio app for demos and tests")
    parser.add_argument("--app", choices=sorted(APPS), default="wan2gp")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    serve_forever(FakeGradio(args.app, args.port), f"{args.app} (Gradio)")


if __name__ == "__main__":
    main()
