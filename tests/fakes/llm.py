"""Fake language-model endpoints serving the real bodies, error bodies included:
OpenAI, Anthropic, Azure OpenAI, Ollama, LM Studio and llama.cpp's llama-server.

Each cloud fake accepts the keys in `valid_keys`, and `limited = True` makes it answer 429
the way the provider does. Anthropic's `spend_limited` answers its monthly spend cap (429 with
error.details.error_code "enforced_spend_limit_reached" and no retry-after), `overloaded` its
529 overloaded_error. llama.cpp's fake serves a single model (`loading`: /health 503 "Loading
model"; `sleeping`: /props is_sleeping) or, with `router` set to {model: status}, router mode's
/models; it records every query it was sent in `queries`, and a router request naming a model
loads that model, as the real router does. LM Studio's fake serves 0.4's /api/v1/models with
loaded_instances[] (`native = False`: an older build without it).

The OpenAI fake echoes the whole presented key in its 401
message (the real one echoes a masked part): the probe must never pass that on.

Run one by hand:  .venv/bin/python -m tests.fakes.llm --provider openai --port 8901
"""
from __future__ import annotations

import argparse
import time

from .base import FakeBackend, serve_forever

FAKE_KEY = "sk-fake-0123456789abcdef"


class _KeyedFake(FakeBackend):
    def __init__(self, port: int = 0, models: list[str] | None = None, valid_keys=(FAKE_KEY,)) -> None:
        super().__init__(port)
        self.valid_keys = set(valid_keys)
        self.limited = False
        self.retry_after = "7"
        if models is not None:
            self.models = models


class FakeOpenAI(_KeyedFake):
    models = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]

    def list_models(self, params):
        auth = self.request_headers.get("authorization", "")
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if key not in self.valid_keys:
            return 401, {"error": {"message": f"Incorrect API key provided: {key}. You can find your API key at "
                                              "https://platform.openai.com/account/api-keys.",
                                   "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        if self.limited:
            return 429, {"error": {"message": f"Rate limit reached for requests on key {key}",
                                   "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, {
                "retry-after": self.retry_after, "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7s"}
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                                           for m in self.models]}

    routes = {"/v1/models": list_models}


class FakeAnthropic(_KeyedFake):
    models = ["claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-3-5-haiku-20241022"]
    page_cap = 2  # the real API honours limit up to 1000; a small cap here exercises pagination
    spend_limited = False
    overloaded = False

    def list_models(self, params):
        if self.request_headers.get("anthropic-version") != "2023-06-01":
            return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "anthropic-version: header is required"}}
        if self.request_headers.get("x-api-key") not in self.valid_keys:
            return 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
        if self.spend_limited:  # the shape of platform.claude.com/docs/en/api/rate-limits: no retry-after
            return 429, {"type": "error", "error": {
                "type": "rate_limit_error", "details": {"error_code": "enforced_spend_limit_reached"},
                "message": "You have reached your API usage limits: your organization has crossed its monthly "
                           "API usage threshold. You will regain access on 2026-01-01 at 00:00 UTC."},
                "request_id": "req_011CfakeSpendLimit"}
        if self.overloaded:
            return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                         "request_id": "req_011CfakeOverloaded"}
        if self.limited:
            return 429, {"type": "error", "error": {"type": "rate_limit_error", "details": None,
                                                    "message": "Number of requests has exceeded your rate limit"}}, {
                "retry-after": self.retry_after}
        limit = min(int(params.get("limit", 20)), self.page_cap)
        start = self.models.index(params["after_id"]) + 1 if params.get("after_id") in self.models else 0
        page = self.models[start:start + limit]
        data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                 "created_at": "2025-02-19T00:00:00Z"} for m in page]
        return {"data": data, "has_more": start + limit < len(self.models),
                "first_id": page[0] if page else None, "last_id": page[-1] if page else None}

    routes = {"/v1/models": list_models}


class FakeAzureOpenAI(_KeyedFake):
    models = ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]

    def list_models(self, params):
        if self.request_headers.get("api-key") not in self.valid_keys:
            return 401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or "
                                   "wrong API endpoint. Make sure to provide a valid key for an active subscription "
                                   "and use a correct regional API endpoint for your resource."}}
        if "api-version" not in params:
            return 404, {"error": {"code": "404", "message": "Resource not found"}}
        if self.limited:
            return 429, {"error": {"code": "429", "message": "Requests to the API have exceeded rate limit."}}, {
                "retry-after": self.retry_after}
        return {"data": [{"id": m, "status": "succeeded", "created_at": 1723075200, "object": "model",
                          "capabilities": {"chat_completion": True, "completion": False, "embeddings": False,
                                           "fine_tune": False, "inference": True},
                          "lifecycle_status": "generally-available",
                          "deprecation": {"inference": 1775001600}} for m in self.models], "object": "list"}

    routes = {"/openai/models": list_models}


class FakeOllama(FakeBackend):
    version = "0.12.3"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.models = ["llama3.2:latest", "qwen2.5:7b"]
        self.loaded = {"llama3.2:latest": 2_019_393_189}
        self.has_status = True  # GET /api/status (newer Ollama); False: 404 as older ones

    def _model(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2025-01-10T12:00:00.000000+01:00",
                "size": 2_019_393_189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}

    def version_route(self, params):
        return {"version": self.version}

    def tags(self, params):
        return {"models": [self._model(m) for m in self.models]}

    def ps(self, params):  # api.ProcessModelResponse
        return {"models": [{**self._model(m), "expires_at": "2099-01-01T00:00:00Z", "size_vram": v,
                            "context_length": 4096} for m, v in self.loaded.items()]}

    def status(self, params):  # api.StatusResponse
        if not self.has_status:
            return 404, "404 page not found"
        return {"cloud": {"disabled": False, "source": "default"}}

    routes = {"/api/version": version_route, "/api/tags": tags, "/api/ps": ps, "/api/status": status}


class FakeLMStudio(FakeBackend):
    models = ["qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"]

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.native = True  # LM Studio 0.4+: /api/v1/models
        self.loaded = {"qwen2.5-7b-instruct"}

    def list_models(self, params):
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "organization_owner"}
                                           for m in self.models]}

    def v1_models(self, params):
        if not self.native:
            return 404, {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}
        return {"models": [{
            "type": "embedding" if "embed" in m else "llm", "publisher": "lmstudio-community", "key": m,
            "display_name": m, "quantization": {"name": "Q4_K_M", "bits_per_weight": 4}, "size_bytes": 4_683_073_952,
            "params_string": "7B", "max_context_length": 32768, "format": "gguf",
            "loaded_instances": [{"id": m, "config": {"context_length": 4096, "eval_batch_size": 512}}]
            if m in self.loaded else []} for m in self.models]}

    routes = {"/v1/models": list_models, "/api/v1/models": v1_models}


class FakeLlamaCpp(FakeBackend):
    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.loading = False
        self.sleeping = False
        self.router: dict[str, str] | None = None  # router mode: model -> unloaded|loading|loaded|sleeping
        self.failed: dict[str, int] = {}  # router models that failed to load: exit code
        self.queries: list[tuple[str, dict]] = []

    def _seen(self, path, params):
        self.queries.append((path, dict(params)))
        if self.router is not None and params.get("model") in self.router:
            self.router[params["model"]] = "loaded"  # the real router loads a model a request names

    def health(self, params):
        self._seen("/health", params)
        if self.loading:
            return 503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        return {"status": "ok"}

    def props(self, params):
        self._seen("/props", params)
        if self.router is not None and not params.get("model"):
            return {"role": "router", "max_instances": 4, "model_alias": "llama-server", "model_path": "none",
                    "default_generation_settings": {"params": {}, "n_ctx": 0}, "webui_settings": {}}
        return {"default_generation_settings": {"n_ctx": 4096, "params": {"temperature": 0.8}}, "total_slots": 1,
                "model_alias": "Llama-3.2-3B-Instruct-Q4_K_M.gguf", "model_path": "/models/Llama-3.2-3B.gguf",
                "build_info": "b7400-0c1b2d3", "is_sleeping": self.sleeping}

    def list_models(self, params):
        self._seen("/models", params)
        if self.router is not None:
            t = int(time.time())
            return {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "llamacpp", "created": t,
                 "status": {"value": st, "args": ["llama-server", "--port", "0"],
                            **({"failed": True, "exit_code": self.failed[m]} if m in self.failed else {})}}
                for m, st in self.router.items()]}
        return {"object": "list", "data": [{"id": "Llama-3.2-3B-Instruct-Q4_K_M.gguf", "object": "model",
                                            "created": int(time.time()), "owned_by": "llamacpp",
                                            "meta": {"n_ctx_train": 131072, "n_params": 3212749888}}]}

    routes = {"/health": health, "/props": props, "/v1/models": list_models, "/models": list_models}


FAKES = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "azure": FakeAzureOpenAI, "ollama": FakeOllama,
         "lmstudio": FakeLMStudio, "llamacpp": FakeLlamaCpp}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake language-model endpoint")
    parser.add_argument("--provider", choices=sorted(FAKES), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_forever(FAKES[args.provider](args.port), args.provider)


if __name__ == "__main__":
    main()
