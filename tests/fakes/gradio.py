"""Fake Gradio apps in the shapes of Gradio 3.14 (RVC WebUI's pin: /config and
/queue/status, no /info), Gradio 3.50 (AudioLDM: untitled, named by the <h1> of a gr.HTML)
and Gradio 5 (Wan2GP: everything under /gradio_api). /config's `dependencies` carry each
named endpoint's api_name as the real versions write it (3.14's shape is copied from a
real gradio 3.14.0 app). Any title can be served, to play the wrong app on a port.

Run one by hand:  .venv/bin/python -m tests.fakes.gradio --app wan2gp --port 7860
"""
from __future__ import annotations

import argparse

from .base import FakeBackend, serve_forever

# The 14 api_names of RVC's webui.py (RVC-Project/Retrieval-based-Voice-Conversion-WebUI).
RVC_ENDPOINTS = ["ckpt_extract", "ckpt_merge", "ckpt_modify", "ckpt_show", "infer_change_voice", "infer_clean",
                 "infer_convert", "infer_convert_batch", "infer_refresh", "pymss_separate", "train_extract_f0_feature",
                 "train_preprocess", "train_start", "train_start_all"]
AUDIOLDM_HTML = """
    <div style="text-align: center; max-width: 700px; margin: 0 auto;">
      <div style="display: inline-flex; align-items: center; gap: 0.8rem; font-size: 1.75rem;">
        <h1 style="font-weight: 900; margin-bottom: 7px; line-height: normal;">
          AudioLDM: Text-to-Audio Generation with Latent Diffusion Models
        </h1>
      </div>
    </div>
"""
APPS = {
    # app: (gradio version, title, named endpoints, (component type, value))
    "wan2gp": ("5.29.0", "WanGP", ["generate_video", "refresh_gallery", "abort"], ("markdown", "WanGP by DeepBeepMeep")),
    "rvc": ("3.14.0", "RVC WebUI", RVC_ENDPOINTS, ("markdown", "<p>RVC WebUI</p>\n")),
    "audioldm": ("3.50.2", "Gradio", ["text2audio"], ("html", AUDIOLDM_HTML)),
    "other": ("4.44.1", "Stable Diffusion", ["txt2img"], ("markdown", "Some other app")),
}


class FakeGradio(FakeBackend):
    def __init__(self, app: str = "wan2gp", port: int = 0, *, version: str | None = None,
                 title: str | None = None) -> None:
        super().__init__(port)
        gv, t, endpoints, ui = APPS[app]
        self.gradio_version = version or gv
        self.title = t if title is None else title
        self.endpoints = list(endpoints)
        self.hidden_endpoints: list[str] = []  # named but hidden from the API page (show_api=False)
        self.ui = ui
        self.queue_size = 0
        parts = self.gradio_version.split(".")
        self.major, self.minor = int(parts[0]), int(parts[1])
        prefix = "/gradio_api" if self.major >= 5 else ""
        self.routes = {"/config": FakeGradio.config, prefix + "/queue/status": FakeGradio.queue_status}
        if (self.major, self.minor) > (3, 14):  # 3.14 answers 404 to /info
            self.routes[prefix + "/info"] = FakeGradio.info

    def _dependency(self, n: int, name: str | None, shown: bool = True) -> dict:
        dep = {"targets": [100 + n], "trigger": "click", "inputs": [2], "outputs": [3], "backend_fn": True,
               "js": None, "queue": None, "api_name": name, "scroll_to_output": False, "show_progress": True,
               "every": None, "batch": False, "max_batch_size": 4, "cancels": []}
        if self.major >= 4:
            dep["id"] = n
            dep["show_api"] = shown
        if self.major >= 6:  # 6.x writes api_name=False as "false", hidden by its visibility
            del dep["show_api"]
            dep["api_visibility"] = "public" if shown else "private"
        return dep

    def config(self, params):
        kind, value = self.ui
        deps = [self._dependency(i, name) for i, name in enumerate(self.endpoints)]
        deps += [self._dependency(len(deps) + i, name, shown=False) for i, name in enumerate(self.hidden_endpoints)]
        deps.append(self._dependency(len(deps), None))  # a listener with no API name
        cfg = {
            "version": self.gradio_version, "mode": "blocks", "dev_mode": False,
            "components": [{"id": 1, "type": kind, "props": {"value": value, "name": kind, "visible": True,
                                                             "style": {}}}],
            "theme": "default", "css": None, "title": self.title, "is_space": False, "enable_queue": True,
            "show_error": False, "show_api": True, "is_colab": False,
            "layout": {"id": 0, "children": [{"id": 1}]}, "dependencies": deps,
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
        if self.major == 3:  # as gradio 3.14.0 answers
            return {"msg": "estimation", "rank": None, "queue_size": self.queue_size,
                    "avg_event_process_time": None, "avg_event_concurrent_process_time": None,
                    "rank_eta": None, "queue_eta": 1}
        return {"msg": "estimation", "event_id": None, "rank": None, "queue_size": self.queue_size, "rank_eta": None}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Gradio app for demos and tests")
    parser.add_argument("--app", choices=sorted(APPS), default="wan2gp")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    serve_forever(FakeGradio(args.app, args.port), f"{args.app} (Gradio)")


if __name__ == "__main__":
    main()
