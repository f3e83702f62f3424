"""Every fake at once, on the default ports, for a demo of `make run` without any backend:

    terminal 1:  .venv/bin/python -m tests.fakes.all
    terminal 2:  eval "$(.venv/bin/python -m tests.fakes.all --print-env)"  &&  make run

The four backends listen where the probes look by default (ComfyUI 8188, Wan2GP 7860,
RVC WebUI 7865, AudioLDM 7863), and so do the local LLM servers (Ollama 11434, LM Studio
1234, llama.cpp 8080), which the llm probe finds by itself. The cloud fakes (OpenAI,
Anthropic, Azure) have no default port, so the llm probe is pointed at them with the
environment variables that `--print-env` prints (the official SDKs read the same ones).
`--port-offset N` moves everything by N, for a machine where real backends run; the
printed environment then also carries MD_HEALTH_<SERVICE>_URL for each backend.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

from .comfyui import RTX_3090, RTX_4090, FakeComfyUI
from .gradio import FakeGradio
from .llm import FAKE_KEY, FakeAnthropic, FakeAzureOpenAI, FakeLlamaCpp, FakeLMStudio, FakeOllama, FakeOpenAI

# name: (port, factory)
FAKES = {
    "comfyui": (8188, lambda p: FakeComfyUI(p, devices=[RTX_4090, RTX_3090])),  # every GPU shown
    "wan2gp": (7860, lambda p: FakeGradio("wan2gp", p)),
    "rvc": (7865, lambda p: FakeGradio("rvc", p)),
    "audioldm": (7863, lambda p: FakeGradio("audioldm", p)),
    "ollama": (11434, lambda p: FakeOllama(p)),
    "lmstudio": (1234, lambda p: FakeLMStudio(p)),
    "llamacpp": (8080, lambda p: FakeLlamaCpp(p)),
    "openai": (8901, lambda p: FakeOpenAI(p)),
    "anthropic": (8902, lambda p: FakeAnthropic(p)),
    "azure": (8903, lambda p: FakeAzureOpenAI(p)),
}
BACKENDS = ("comfyui", "wan2gp", "rvc", "audioldm")


def environment(offset: int = 0) -> dict[str, str]:
    port = lambda name: FAKES[name][0] + offset  # noqa: E731
    env = {
        "OPENAI_API_KEY": FAKE_KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port('openai')}/v1",
        "ANTHROPIC_API_KEY": FAKE_KEY, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port('anthropic')}",
        "AZURE_OPENAI_API_KEY": FAKE_KEY, "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{port('azure')}",
    }
    if offset:
        env["OLLAMA_HOST"] = f"127.0.0.1:{port('ollama')}"
        env["MD_HEALTH_LMSTUDIO_URL"] = f"http://127.0.0.1:{port('lmstudio')}/v1"
        env["MD_HEALTH_LLAMACPP_URL"] = f"http://127.0.0.1:{port('llamacpp')}"
        for name in BACKENDS:
            env[f"MD_HEALTH_{name.upper()}_URL"] = f"http://127.0.0.1:{port(name)}"
    return env


def print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f'$env:{key}="{value}"' if os.name == "nt" else f"export {key}={value}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run fakes of every backend and LLM provider")
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every port")
    parser.add_argument("--print-env", action="store_true", help="print the environment for the probes and exit")
    parser.add_argument("--only", nargs="*", choices=sorted(FAKES), help="start only these fakes")
    parser.add_argument("--loading-for", type=float, default=20.0, metavar="SECONDS",
                        help="llama.cpp answers 503 \"Loading model\" this long first, as the real one does "
                             "while it loads its model (the llm provider shows loading, then ready); 0: ready at once")
    args = parser.parse_args()
    env = environment(args.port_offset)
    if args.print_env:
        print_env(env)
        return
    running = []
    for name, (port, factory) in FAKES.items():
        if args.only and name not in args.only:
            continue
        try:
            fake = factory(port + args.port_offset).start()
        except OSError as exc:
            print(f"  {name:<10} port {port + args.port_offset} is taken ({exc.strerror}); skipped", flush=True)
            continue
        running.append(fake)
        print(f"  {name:<10} {fake.url}", flush=True)
        if name == "llamacpp" and args.loading_for > 0:
            fake.loading = True
            threading.Timer(args.loading_for, setattr, (fake, "loading", False)).start()
    print("\nFor the probes (or eval \"$(python -m tests.fakes.all --print-env)\"):", flush=True)
    print_env(env)
    print("\nCtrl+C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for fake in running:
            fake.stop()


if __name__ == "__main__":
    main()
