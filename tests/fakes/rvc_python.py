"""Fake rvc-python API server (rvc_python/api.py shapes): GET /models, GET /params.

Run it by hand:  .venv/bin/python -m tests.fakes.rvc_python --port 5050
"""
from __future__ import annotations

import argparse

from .base import FakeBackend, serve_forever


class FakeRVCPython(FakeBackend):
    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.models = ["narrator_v2", "villain"]

    def models_route(self, params):
        return {"models": self.models}

    def params_route(self, params):
        return {"f0method": "rmvpe", "f0up_key": 0, "index_rate": 0.5, "filter_radius": 3,
                "resample_sr": 0, "rms_mix_rate": 0.25, "protect": 0.33}

    routes = {"/models": models_route, "/params": params_route}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake rvc-python API server")
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args()
    serve_forever(FakeRVCPython(args.port), "rvc-python")


if __name__ == "__main__":
    main()
