"""Fake language-model endpoints serving the real bodies, error bodies included:
OpenAI, Anthropic, Azure OpenAI, Ollama, LM Studio and llama.cpp's llama-server.

Each cloud fake accepts the keys in `valid_keys`, and `limited = True` makes it answer 429
the way the provider does. The OpenAI fake echoes the whole presented key in its 401
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

    def list_models(self, params):
        if self.request_headers.get("anthropic-version") != "2023-06-01":
            return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "anthropic-version: header is required"}}
        if self.request_headers.get("x-api-key") not in self.valid_keys:
            return 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
        if self.limited:
            return 429, {"type": "error", "error": {"type": "rate_limit_error",
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
    version = "0.5.7"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.models = ["llama3.2:latest", "qwen2.5:7b"]
        self.loaded = {"llama3.2:latest": 2_019_393_189}

    def _model(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2025-01-10T12:00:00.000000+01:00",
                "size": 2_019_393_189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}

    def version_route(self, params):
        return {"version": self.version}

    def tags(self, params):
        return {"models": [self._model(m) for m in self.models]}

    def ps(self, params):
        return {"models": [{**self._model(m), "expires_at": "2099-01-01T00:00:00Z", "size_vram": v}
                           for m, v in self.loaded.items()]}

    routes = {"/api/version": version_route, "/api/tags": tags, "/api/ps": ps}


class FakeLMStudio(FakeBackend):
    models = ["qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"]

    def list_models(self, params):
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "organization_owner"}
                                           for m in self.models]}

    routes = {"/v1/models": list_models}


class FakeLlamaCpp(FakeBackend):
    loading = False

    def health(self, params):
        if self.loading:
            return 503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        return {"status": "ok"}

    def list_models(self, params):
        return {"object": "list", "data": [{"id": "Llama-3.2-3B-Instruct-Q4_K_M.gguf", "object": "model",
                                            "created": int(time.time()), "owned_by": "llamacpp",
                                            "meta": {"n_ctx_train": 131072, "n_params": 3212749888}}]}

    routes = {"/health": health, "/v1/models": list_models}


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
