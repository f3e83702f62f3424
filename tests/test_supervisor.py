"""`md-probes run-all`: one child per enabled service, a crashed child restarted with
backoff (capped, however often it crashes), and a clean stop (lifeline EOF or SIGTERM)
that leaves no orphans."""
from __future__ import annotations

import logging
import re
import sys
import threading

import psutil
import pytest

from bus.config import Config
from probes.supervisor import (FIRST_BACKOFF, MAX_BACKOFF, STABLE_AFTER, Child, probe_service, restart_delay,
                               supervise)
from tests.conftest import wait_for
from tests.reliability import measured  # noqa: F401 - fixture
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.gradio import FakeGradio


def children_by_service(pid: int) -> dict[str, psutil.Process]:
    out = {}
    try:
        for child in psutil.Process(pid).children():
            service = probe_service(child)  # spawned (`probes run x`) or forked (named probe-x)
            if service:
                out[service] = child
    except psutil.NoSuchProcess:
        pass
    return out


@pytest.fixture
def two_service_config(tmp_path, monkeypatch):
    comfy, wan = FakeComfyUI().start(), FakeGradio("wan2gp").start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[services.comfyui]\nurl = "{comfy.url}"\n\n[services.wan2gp]\nurl = "{wan.url}"\n\n'
                   '[services.rvc]\nenabled = false\n\n[services.audioldm]\nenabled = false\n\n'
                   '[services.llm]\nenabled = false\n')
    monkeypatch.setenv("MD_HEALTH_CONFIG", str(cfg))
    yield cfg
    comfy.stop()
    wan.stop()


def test_restart_delay_backs_off_to_the_cap():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(20) == MAX_BACKOFF
    # 0.5 * 2 ** 1024 does not fit a float: the 1025th restart raised OverflowError and the
    # supervisor's finally stopped every probe.
    assert all(restart_delay(n) == MAX_BACKOFF for n in range(7, 5001))


def test_a_child_crashing_5000_times_on_a_fake_clock(measured):
    """The supervisor's decisions (Child) replayed: start, crash 0.3 s later, wait, start..."""
    now = 1000.0
    life = Child(now)
    assert life.state == Child.STARTING and life.start_due(now)
    delays, starts = [], []
    for _ in range(5000):
        assert life.start_due(now)
        life.started(now)
        starts.append(now)
        assert life.state == Child.RUNNING and not life.start_due(now + 1e6)  # never a second copy
        now += 0.3
        delays.append(life.exited(now))
        assert life.state == Child.BACKING_OFF
        assert not life.start_due(now + delays[-1] - 0.01)  # no restart before its delay
        now += delays[-1]
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF]
    assert set(delays[6:]) == {MAX_BACKOFF}
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) <= MAX_BACKOFF + 0.3 + 1e-6 and life.restarts == 5000
    # A child that settled (ran STABLE_AFTER) and then crashed starts its backoff over.
    life.started(now)
    assert life.exited(now + STABLE_AFTER) == FIRST_BACKOFF
    measured.record("supervisor_crash_loop", section="Faults", order=17,
                    case="A probe child crashing 5,000 times (the supervisor's Child machine on a fake clock)",
                    required="restart delay doubles from 0.5 s to the 30 s cap and stays there; never a second "
                             "copy; backoff starts over after 60 s up (before: OverflowError at restart 1025, "
                             "which stopped every probe)",
                    measured=f"5000 restarts, delays {delays[:7]} then {MAX_BACKOFF:g} s; longest gap between "
                             f"starts {max(gaps):.1f} s; after a stable run {FIRST_BACKOFF:g} s again",
                    crashes=5000, max_delay_s=max(delays), max_start_gap_s=round(max(gaps), 3))


def test_a_crash_looping_child_is_restarted_with_a_capped_delay(caplog, measured):
    """Real processes: a child that exits at once (its config has no such service) is
    restarted again and again with the delay doubling to the cap, and the others' supervisor
    stays up. Small delays (0.05 s to 0.2 s) keep the test short; the rule is the same."""
    caplog.set_level(logging.INFO, logger="probes.supervisor")
    stop = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(
        supervise(Config(services={"ghost": {}}), None, stop, first_backoff=0.05, max_backoff=0.2)), daemon=True)
    thread.start()

    def exits():
        return [r for r in caplog.records if r.getMessage().startswith("probe ghost exited with code 2")]

    try:
        wait_for(lambda: len(exits()) >= 8, timeout=90, every=0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and result == [0]
    # From the messages: another module's logging filter may have folded args into them.
    delays = [float(re.search(r"restart \d+ in ([\d.]+) s", r.getMessage()).group(1)) for r in exits()]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2] and max(delays) == 0.2
    pids = [re.search(r"\(pid (\d+)\)", r.getMessage()).group(1) for r in caplog.records
            if r.getMessage().startswith("probe ghost started")]
    assert len(set(pids)) >= 8
    assert "all probes stopped" in caplog.text
    measured.record("supervisor_crash_loop_real", section="Faults", order=18,
                    case="A real probe child that exits at once, restarted again and again",
                    required="each restart after the doubling delay, capped (0.05 s to 0.2 s in the test); the "
                             "supervisor stays up and stops cleanly",
                    measured=f"{len(delays)} restarts of {len(set(pids))} processes, delays {delays[:5]} ..., "
                             f"max {max(delays):g} s; clean stop",
                    restarts=len(delays), max_delay_s=max(delays))


def test_kill_9_child_is_restarted_and_stop_leaves_no_orphans(endpoints, procs, client, two_service_config):
    sup = procs.start("-m", "probes", "run-all", name="supervisor")
    kids = wait_for(lambda: (k := children_by_service(sup.pid)).keys() == {"comfyui", "wan2gp"} and k, timeout=30)
    procs.aggregator()
    wait_for(lambda: client.services.get("comfyui", {}).get("state") == "connected"
             and client.services.get("wan2gp", {}).get("state") == "connected", timeout=30, client=client)

    victim = kids["comfyui"]
    victim.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no chance to clean up
    victim.wait(timeout=10)
    new = wait_for(lambda: (c := children_by_service(sup.pid).get("comfyui")) and c.pid != victim.pid and c,
                   timeout=30)
    assert kids["wan2gp"].is_running()  # the others are left alone
    # The restarted probe publishes again.
    client.refresh("comfyui")
    wait_for(lambda: client.services["comfyui"].get("probe_alive") is not False
             and client.services["comfyui"]["state"] == "connected", timeout=30, client=client)

    all_kids = [new, kids["wan2gp"]]
    sup.stdin.close()  # the lifeline: what `md-health up` and the test fixtures do to stop it
    assert sup.wait(timeout=20) == 0
    gone, alive = psutil.wait_procs(all_kids, timeout=10)
    assert not alive, f"orphans left: {alive}"
    out = procs.output(sup)
    assert "probe comfyui exited with code" in out and "restart 1 in 0.5 s" in out
    assert "Traceback" not in out


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a POSIX signal")
def test_sigterm_stops_everything(endpoints, procs, two_service_config):
    sup = procs.start("-m", "probes", "run-all", name="supervisor")
    kids = wait_for(lambda: (k := children_by_service(sup.pid)).keys() == {"comfyui", "wan2gp"} and k, timeout=30)
    sup.terminate()
    assert sup.wait(timeout=20) == 0
    gone, alive = psutil.wait_procs(list(kids.values()), timeout=10)
    assert not alive
    assert "all probes stopped" in procs.output(sup)


def test_supervisor_killed_hard_children_follow(endpoints, procs, two_service_config):
    """Even a kill -9 of the supervisor leaves nothing behind: the children's lifeline ends."""
    sup = procs.start("-m", "probes", "run-all", name="supervisor")
    kids = wait_for(lambda: (k := children_by_service(sup.pid)).keys() == {"comfyui", "wan2gp"} and k, timeout=30)
    sup.kill()
    sup.wait(timeout=10)
    gone, alive = psutil.wait_procs(list(kids.values()), timeout=15)
    assert not alive
