"""The idle cost of `md-probes run-all` (bench figures 9 and 15): a supervisor that sleeps
until a child exits, on Linux children forked from it that share its imported runtime, and
a probe loop that wakes only for work (a check, a heartbeat).

Wakeups are the context switches of every thread of a process (/proc/<pid>/task/*/status),
and memory is PSS (a page shared by n processes counts 1/n in each), so both are Linux-only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from probes.base import HEARTBEAT_INTERVAL, CheckResult, Probe, ProbeRunner
from tests.conftest import wait_for
from tests.test_probe_runner import FakeClock, run_loop
from tests.fakes.base import free_port

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, PSS and fork are Linux's")

SERVICES = ("comfyui", "wan2gp", "rvc", "audioldm")


def _config(path: Path) -> None:
    # Backends that are not running: the probes stay up (backing off), which is all we measure.
    path.write_text("".join(f'[services.{s}]\nurl = "http://127.0.0.1:{free_port()}"\n\n' for s in SERVICES)
                    + "[services.llm]\nenabled = false\n")


def _children(pid: int) -> dict[str, psutil.Process]:
    from probes.supervisor import probe_service

    out = {}
    for child in psutil.Process(pid).children():
        service = probe_service(child)
        if service:
            out[service] = child
    return out


def _switches(pid: int) -> int:
    """Context switches so far, over every thread of `pid`: each one is a wakeup (or a preemption)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


def _pss_mib(procs: list[psutil.Process]) -> float:
    return sum(p.memory_full_info().pss for p in procs) / 2**20


@pytest.fixture
def supervisor(endpoints, procs, isolated_env):
    _config(isolated_env / "config.toml")
    sup = procs.start("-m", "probes", "run-all", name="supervisor")
    kids = wait_for(lambda: (k := _children(sup.pid)).keys() == set(SERVICES) and k, timeout=30)
    # Every probe has started its loop (its lifeline thread and its check worker exist).
    wait_for(lambda: all(k.num_threads() >= 2 for k in kids.values()), timeout=30)
    return sup, kids


@linux_only
def test_the_idle_supervisor_does_not_wake(supervisor):
    """It waits for a child's exit or a stop, not on a timer: polling its children every 0.2 s
    woke it 5 times a second."""
    sup, _ = supervisor
    before, t0 = _switches(sup.pid), time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 10, timeout=30, every=0.5)  # an observation window
    rate = (_switches(sup.pid) - before) / (time.monotonic() - t0)
    assert rate < 1.0, f"idle supervisor woke {rate:.1f} times a second"  # was 5/s; now about 0


@linux_only
def test_forked_probes_share_the_supervisors_memory(supervisor):
    """The children are forked from a supervisor that already imported zmq, msgpack, psutil
    and the probe classes, so those pages count once across the tree. Measured on this
    machine: 47-50 MiB for the supervisor and 4 probes, forked; 80-81 MiB, each probe its own
    interpreter. The bound keeps 25 % of margin both ways."""
    sup, kids = supervisor
    tree = [psutil.Process(sup.pid), *kids.values()]
    readings = []
    t0 = time.monotonic()
    # Over a few seconds of its first checks and backoff, the largest reading counts.
    wait_for(lambda: readings.append(_pss_mib(tree)) or time.monotonic() - t0 >= 3, timeout=30, every=0.5)
    assert max(readings) < 62, f"tree PSS {max(readings):.1f} MiB for {len(tree)} processes"


@linux_only
def test_a_killed_forked_probe_comes_back_named(supervisor):
    sup, kids = supervisor
    victim = kids["comfyui"]
    assert victim.name() == "probe-comfyui"  # what ps, top and psutil show for a forked probe
    victim.kill()  # SIGKILL: no chance to clean up
    new = wait_for(lambda: (c := _children(sup.pid).get("comfyui")) and c.pid != victim.pid and c, timeout=30)
    assert new.name() == "probe-comfyui" and new.ppid() == sup.pid
    assert all(k.is_running() for s, k in kids.items() if s != "comfyui")


def test_an_idle_probe_wakes_once_per_check_and_its_status_is_its_beat(endpoints):
    """The real loop (ProbeRunner.loop) on a fake clock, a healthy backend checked every 2 s:
    the loop wakes once per check, and the check's status is the beat (any message proves a
    probe alive, as in the Guide's Paranoid Pirate), so no heartbeat goes out while checks come
    on time. A heartbeat every second besides made 1 wakeup a second and 1.5 messages per
    second on the bus (2 a second before that, with a 20 ms poll for each running check)."""
    clock = FakeClock()

    class Healthy(Probe):
        kind = "scripted"

        def check(self):
            return CheckResult(True, version="1.0")

    r = ProbeRunner(Healthy("svc", {"url": "http://127.0.0.1:9", "interval": 2.0, "timeout": 2.0}),
                    endpoints, clock=clock)
    wakes: set[float] = set()
    t0 = clock()

    def wait(seconds):
        clock.t += seconds
        if clock() - t0 > 60:  # the first minute: confirming, then steady
            wakes.add(round(clock(), 6))
        if clock() - t0 > 660:
            r.stop.set()
        return False, False

    run_loop(r, endpoints, clock, wait)  # the check finishes at once (its end wakes the real loop)
    steady = [(t, topic) for t, topic, _ in r.publisher.sent if t - t0 > 60]
    heard = [t for t, topic in steady if topic.startswith(("heartbeat.", "status."))]
    assert max(b - a for a, b in zip(heard, heard[1:])) <= HEARTBEAT_INTERVAL + 1e-6
    assert not [t for t, topic in steady if topic.startswith("heartbeat.")]  # the statuses were the beats
    assert r.machine.state == "connected"
    rate = len(wakes) / 600
    assert rate <= 0.55, f"{rate:.2f} wakeups a second"  # 0.5: one per check; was 1


def test_a_hung_check_does_not_silence_the_probe(endpoints):
    """A check that hangs for a minute (a backend that accepts and never answers, before its
    timeout): the loop, which never waits on the check, keeps beating; a beat due while the
    check runs waits BEAT_HOLD for its status at most, so the probe is heard at least every
    HEARTBEAT_INTERVAL + BEAT_HOLD, far inside the aggregator's 3 intervals."""
    from concurrent.futures import Future

    from probes.base import BEAT_HOLD
    from tests.test_probe_runner import Recording
    from bus.sockets import close, new_context, pub_socket

    clock = FakeClock()
    r = ProbeRunner(Probe("svc", {"url": "http://127.0.0.1:9", "interval": 2.0, "timeout": 60.0}),
                    endpoints, clock=clock)
    t0 = clock()
    running: list[tuple[Future, float]] = []

    def submit(fn):
        future = Future()
        running.append((future, clock() + 60.0))  # each check takes a minute
        return future

    def wait(seconds):
        clock.t += seconds
        for future, done_at in running:
            if not future.done() and clock() >= done_at:
                future.set_result(CheckResult(True, version="1.0"))
        if clock() - t0 > 300:
            r.stop.set()
        return False, False

    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    r.publisher = Recording(sock, r.src, clock)
    try:
        r.loop(wait, submit)
    finally:
        close(sock)
        ctx.term()
    heard = [t for t, topic, _ in r.publisher.sent if topic.startswith(("heartbeat.", "status."))]
    gap = max(b - a for a, b in zip(heard, heard[1:]))
    assert len(running) >= 4  # checks kept coming, one after another
    assert gap <= HEARTBEAT_INTERVAL + BEAT_HOLD + 1e-6, gap
