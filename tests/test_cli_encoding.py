"""`md-health status`, `watch`, `compare` and `alerts` on a stream that cannot encode the
glyphs (a Windows console or pipe with a cp1252 code page): plain characters, no
UnicodeEncodeError, and no ANSI codes when the output is not a terminal. The CLI runs as a
real process against a real aggregator and probe on the fake ComfyUI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for
from tests.fakes.comfyui import FakeComfyUI

GLYPHS = "●◌✖▲…▁▂▃▄▅▆▇█"


def _run(encoding: str, *args: str, timeout: float = 60) -> tuple[int | None, str, str]:
    """Run the CLI with its streams in `encoding`; a `watch` that runs until the timeout
    returns what it printed so far (returncode None)."""
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    cmd = [sys.executable, "-m", "aggregator", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as exc:
        return None, (exc.stdout or b"").decode(encoding), (exc.stderr or b"").decode(encoding, "replace")
    return out.returncode, out.stdout.decode(encoding), out.stderr.decode(encoding, "replace")


@pytest.fixture
def monitor(endpoints, procs, client, isolated_env):
    (isolated_env / "config.toml").write_text("[alerts.comfyui]\nqueue = 1\nraise_after_s = 0\n")
    with FakeComfyUI() as fake:
        fake.set_queue(running=1, pending=2)
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.3")
        # Connected with its queue alert active: the engine shows it as degraded (contract C1).
        wait_for(lambda: client.services.get("comfyui", {}).get("state") == "degraded"
                 and client.services["comfyui"].get("stats", {}).get("count", 0) >= 4 and client.alerts,
                 timeout=30, client=client)
        yield fake


def test_cp1252_streams_get_plain_characters_and_no_ansi(monitor):
    code, out, err = _run("cp1252", "status")
    assert code == 0 and "Traceback" not in err, err
    assert " Degraded" in out and "comfyui" in out
    assert not any(g in out for g in GLYPHS) and "\033" not in out

    code, out, err = _run("cp1252", "compare")
    assert code == 0 and "Traceback" not in err, err
    assert "p95 ms" in out and "\033" not in out

    code, out, err = _run("cp1252", "alerts")
    assert code == 0 and "Traceback" not in err and "queue depth 3 is above 1" in out, err

    code, screen, err = _run("cp1252", "watch", "--every", "0.5", timeout=8)
    assert "Traceback" not in err and "UnicodeEncodeError" not in err, err
    assert "TRENDS 5m" in screen and " Degraded" in screen
    assert any(ch in screen for ch in "_.:-=+*#") and not any(g in screen for g in GLYPHS)
    assert "\033" not in screen  # a pipe is not a terminal: no cursor moves, no colours

    # A stream that can show the glyphs keeps them (still without colours on a pipe).
    code, out, err = _run("utf-8", "status")
    assert code == 0, err
    assert "◑ Degraded" in out and "\033" not in out


def test_every_state_glyph_has_a_plain_stand_in():
    """Each state's words print on any code page: its glyph, whatever it is, has an ASCII
    stand-in, so no two states both print as "?" on cp1252."""
    from aggregator.terminal import PLAIN, STATE_WORDS
    from bus.protocol import STATES

    plain = {}
    for state in STATES:
        text = STATE_WORDS[state][1].translate(PLAIN)
        assert text.isascii(), (state, text)
        plain[state] = text
    assert len(set(plain.values())) == len(plain), plain
