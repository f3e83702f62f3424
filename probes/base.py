"""The loop every probe runs: check, publish status and timings, heartbeat, obey refresh.

A probe subclass only knows its backend's API (`check()`); this module owns the bus side,
the damping of flapping states and the stop/refresh handling, so every probe behaves alike.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from bus.protocol import PROBE_HEARTBEAT_INTERVAL, Publisher, Rejection, decode
from bus.sockets import Endpoints, close, drain, new_context, pub_socket, sub_socket
from bus.wake import StopEvent, Wakeup

from .http import ProbeError
from .liveness import LivenessChannel, local_address

log = logging.getLogger("probes")

# A probe is heard at least every HEARTBEAT_INTERVAL: its status after each check counts as a
# beat (the ZeroMQ Guide's Paranoid Pirate: any message from a peer proves it alive), so a
# heartbeat goes out only when nothing else did. With checks every 2 s that is none at all, and
# the aggregator and each probe wake half as often as with a beat every second besides.
HEARTBEAT_INTERVAL = PROBE_HEARTBEAT_INTERVAL  # the aggregator declares a probe dead after 3 missed
BEAT_HOLD = 0.5  # seconds a due beat waits for a running check, to go out with its status
CONFIRM_DELAY = 0.25  # seconds before re-checking to confirm a state change
MAX_BACKOFF = 30.0  # seconds; reconnect attempts while down slow down to at most this (the epic's cap)
MAX_DOUBLINGS = 32  # the backoff's exponent stops here: any interval above 7 ns has reached the cap by then
IDLE_WAKE = 1.0  # longest poll while idle when `stop` is a plain Event, which cannot wake the poll:
                 # how soon the loop sees it (the lifeline's grace is 5 s). A StopEvent wakes it.
RECONNECT_MAX_MS = 1000  # longest pause between libzmq's attempts to reach the aggregator
MIN_EVENT_GAP = 0.2  # seconds; a burst of pushed events (ComfyUI queue changes) costs at most one check per gap,
                     # and a slow backend gets at least this rest between two checks


@dataclass
class Timing:
    endpoint: str
    duration_ms: float
    ok: bool
    error_kind: str | None = None


@dataclass
class CheckResult:
    """What one check learned. `healthy=False` with `error` set means the check failed."""
    healthy: bool
    version: str = ""
    capabilities: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    error_kind: str = ""
    # Reachable but wrong (wrong app on the port, bad key): `error`, not `disconnected`.
    reachable: bool = False
    timings: list[Timing] = field(default_factory=list)
    # Healthy but not ready: "loading" (a model is still loading) or "sleeping" (unloaded by
    # idle time, wakes on use). Shown instead of `connected`; "" means ready.
    readiness: str = ""


class Probe:
    """Base class: subclasses set `kind` and implement `check()`."""
    kind = "base"
    hint = ""  # what to try when the backend is not running, e.g. "Start it with `python main.py`"

    def __init__(self, service: str, settings: dict[str, Any]) -> None:
        self.service = service
        self.settings = settings
        self.url = settings.get("url", "")
        self.timeout = float(settings.get("timeout", 2.0))
        self.interval = float(settings.get("interval", 2.0))
        self._usage = None

    def check(self) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- optional push channel (ComfyUI's WebSocket). The runner registers the returned zmq
    # socket in its poller; `on_watch` drains it and says whether to check at once.
    def open_watch(self, ctx) -> "zmq.Socket | None":
        return None

    def on_watch(self, sock) -> bool:
        return False

    def close_watch(self) -> None:
        pass

    # -- the liveness channel (probes/liveness.py): a held idle TCP connection to the backend's
    # port reveals its death at once, and a cheap connect while it is down reveals its return.
    def liveness_address(self) -> tuple[str, int] | None:
        """(host, port) to hold, or None: by default the URL's, when it is on this machine."""
        return local_address(self.url)

    def usage(self, vram_used_bytes: int | None = None, url: str | None = None) -> dict[str, Any]:
        """Resource use of the backend's process (when it runs here) and of this host."""
        from .resources import ResourceSampler

        if self._usage is None:
            self._usage = ResourceSampler()
        return self._usage.sample(url or self.url, vram_used_bytes)

    def timed_get(self, result: CheckResult, path: str, **kwargs):
        """GET url+path, recording a Timing on `result` whether it succeeds or not."""
        from .http import get

        endpoint = path.split("?")[0]
        start = time.perf_counter()
        try:
            resp = get(self.url + path, self.timeout, **kwargs)
        except ProbeError as exc:
            result.timings.append(Timing(endpoint, (time.perf_counter() - start) * 1000, False, exc.kind))
            raise
        ok = 200 <= resp.status < 300
        result.timings.append(Timing(endpoint, resp.duration_ms, ok, None if ok else "http_status"))
        return resp

    def explain(self, exc: ProbeError) -> str:
        """Turn a request failure into advice a person can act on."""
        if exc.kind == "refused" and self.hint:
            return f"{exc.message}: is {self.display_name} running? {self.hint}"
        if exc.kind == "timeout":
            return f"{exc.message}: {self.display_name} may be busy or hung; try again or restart it"
        return exc.message

    @property
    def display_name(self) -> str:
        return self.service

    def fail(self, exc: ProbeError, result: CheckResult | None = None) -> CheckResult:
        r = result or CheckResult(False)
        r.healthy = False
        r.error = self.explain(exc)
        r.error_kind = exc.kind
        r.reachable = exc.kind in ("http_status", "not_json", "wrong_service", "too_large", "redirect", "auth")
        return r


class StateMachine:
    """Damps flapping, in both directions, and paces the checks.

    Shown states: `connecting`, `connected`, `disconnected`, `error`. A failure from
    Connected shows Connecting (retrying); only `failures_to_down` consecutive failures
    show Disconnected (or Error when the backend answered but was wrong). Recovery from
    down is debounced the same way; a blip that never reached "down" ends with the first
    success.

    Pace (how soon the next check comes), one of three named phases:
    - STEADY: every interval (up, or not yet judged);
    - CONFIRMING: a change awaits confirmation, so re-check quickly instead of waiting a
      full interval: damping costs a fraction of a second rather than whole intervals;
    - BACKING_OFF: confirmed down; each further failed check doubles the pause up to the
      cap. The doubling count stops at MAX_DOUBLINGS, so a backend switched off for a week
      (20,000 checks) costs the same arithmetic as one switched off for a minute.
    """

    STEADY, CONFIRMING, BACKING_OFF = "steady", "confirming", "backing off"

    def __init__(self, failures_to_down: int = 2) -> None:
        self.n = max(1, failures_to_down)
        self.state = "connecting"
        self.confirmed: str | None = None  # the last state reached through n agreeing checks
        self._fails = 0
        self._oks = 0
        self._doublings = 0  # failed checks while confirmed down, at most MAX_DOUBLINGS

    @property
    def unconfirmed(self) -> bool:
        return 0 < self._fails < self.n or (0 < self._oks < self.n and self.confirmed != "connected")

    @property
    def pace(self) -> str:
        if self.unconfirmed:
            return self.CONFIRMING
        return self.BACKING_OFF if self._doublings else self.STEADY

    def pause(self, interval: float) -> float:
        """Seconds until the next check, for a probe whose configured interval is `interval`."""
        pace = self.pace
        if pace == self.CONFIRMING:
            return min(CONFIRM_DELAY, interval)
        if pace == self.BACKING_OFF:
            # Never more often than the interval, and never slower than 30 s (or the interval
            # itself, when that is longer: the llm probe's minute).
            return min(max(MAX_BACKOFF, interval), interval * 2.0 ** self._doublings)
        return interval

    def update(self, result: CheckResult) -> str:
        if result.healthy:
            self._fails = 0
            self._oks += 1
            if self._oks >= self.n or self.confirmed == "connected":
                self.state = self.confirmed = "connected"
            else:
                self.state = "connecting"
        else:
            self._oks = 0
            self._fails += 1
            if self._fails >= self.n:
                self.state = self.confirmed = "error" if result.reachable else "disconnected"
            else:
                self.state = "connecting"
        if self.state == "connected" and result.readiness:
            self.state = result.readiness
        down = self.state in ("disconnected", "error") and not self.unconfirmed
        self._doublings = min(self._doublings + 1, MAX_DOUBLINGS) if down else 0
        return self.state

    def retry_briskly(self) -> None:
        """A person asked for a refresh: start the backoff over (the next check is due now)."""
        self._doublings = 0


def probe_context() -> zmq.Context:
    """The probe's ZeroMQ context. With no aggregator listening, libzmq retries each
    connection every 100 ms forever (0.23-0.27 % of a core per idle probe); its sockets back
    off to one attempt a second instead, which still reconnects well within the aggregator's
    3-heartbeat liveness window once it comes back."""
    ctx = new_context()
    ctx.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)  # default for every socket made from it
    return ctx


class ProbeRunner:
    """Runs one probe on the bus until `stop` is set.

    `clock` is the monotonic clock every interval and deadline of the loop runs on; a
    test passes a fake one (with `loop()`) to replay a week in seconds."""

    def __init__(self, probe: Probe, endpoints: Endpoints, *, required: bool = False,
                 failures_to_down: int = 2, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.endpoints = endpoints
        self.required = required
        self.stop = stop or StopEvent()
        self.machine = StateMachine(failures_to_down)
        self.src = f"probe.{probe.service}"
        self.clock = clock
        self.last_check = -math.inf
        self.liveness: LivenessChannel | None = None  # opened by run() for a backend on this machine
        self._last_status: dict[str, Any] | None = None  # the body last published, to repeat to a newcomer
        self._beat_dropped = 0  # publisher.dropped as the last heartbeat reported it

    def run(self) -> None:
        """The loop on real sockets. A check runs on a worker thread while this thread keeps
        the heartbeat, refresh commands and pushed events going, so a hung backend (or a slow
        cloud API) never makes the probe itself look dead. Only this thread touches zmq sockets."""
        ctx = probe_context()
        pub = pub_socket(ctx, self.endpoints.events)
        control = sub_socket(ctx, self.endpoints.snapshots, prefixes=("control.",))
        self.publisher = Publisher(pub, self.src)
        # Every subscription (also a repeated one) reaches us, so each aggregator that connects,
        # a restarted one included, triggers a fresh copy of the current status (below).
        pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)
        watch = self.probe.open_watch(ctx)
        if watch is not None:
            poller.register(watch, zmq.POLLIN)
        address = self.probe.liveness_address()
        if address is not None:
            self.liveness = LivenessChannel(address, poller, self.clock)
        worker = ThreadPoolExecutor(1, thread_name_prefix=f"check-{self.probe.service}")
        # A finished check wakes the poll (the worker writes a byte), so the loop neither
        # polls for it nor sees it late; so does a stop, if `stop` is a StopEvent.
        done = Wakeup()
        poller.register(done.rx, zmq.POLLIN)
        if isinstance(self.stop, StopEvent):
            poller.register(self.stop.wakeup.rx, zmq.POLLIN)

        def submit(fn: Callable[[], CheckResult]) -> Future:
            future = worker.submit(fn)
            future.add_done_callback(lambda _: done.wake())
            return future

        def wait(seconds: float) -> tuple[bool, bool]:
            ready = dict(poller.poll(math.ceil(seconds * 1000)))  # ceil: a float is truncated to 0 ms
            if done.rx.fileno() in ready:
                done.clear()
            if pub in ready and any(f[:1] == b"\x01" for f in drain(pub, 100, 0.01)):
                # An aggregator subscribed: what was published before it connected is lost, and
                # the next check may be 30 s away (60 s for the llm probe), so say it again now.
                self._publish_status_again()
            refresh = control in ready and self._refresh_requested(control)
            pushed = watch is not None and watch in ready and self.probe.on_watch(watch)
            # The port closed for good (death) or listens again (return): check now, whatever
            # the backoff (which starts over, as for a refresh); the damping stays the check's.
            if self.liveness is not None and self.liveness.handle(ready):
                self.machine.retry_briskly()
                pushed = True
            return refresh, pushed

        try:
            self.loop(wait, submit)
        finally:
            worker.shutdown(wait=False, cancel_futures=True)
            done.close()
            self.probe.close_watch()
            if self.liveness is not None:
                self.liveness.close()
            close(pub, control)
            if watch is not None:
                close(watch)
            ctx.term()

    def loop(self, wait: Callable[[float], tuple[bool, bool]],
             submit: Callable[[Callable[[], CheckResult]], Future]) -> None:
        """Beat, check and obey until `stop`. `wait(seconds)` blocks at most that long and
        says (refresh asked, pushed news); `submit(fn)` starts a check and returns its Future."""
        clock = self.clock
        pending: Future | None = None
        again = False  # a refresh arrived while a check was running: check again right after it
        nudged = False  # pushed news arrived while a check was running: check again after the gap
        next_check = started = clock()
        self._publish_status(CheckResult(False), "connecting")
        self._beat()  # the aggregator learns the beat interval from a heartbeat
        next_beat = clock() + HEARTBEAT_INTERVAL
        while not self.stop.is_set():
            if pending is not None and pending.done():
                self._finish(pending.result())
                next_beat = clock() + HEARTBEAT_INTERVAL  # the status just sent was a beat
                pending = None
                # The pause runs from the check's start, so "at most 30 s apart" holds whatever
                # the check took; a check that overran its pause is still followed by a short rest.
                next_check = clock() if again else max(started + self.pause, clock() + MIN_EVENT_GAP)
                if nudged and self.machine.pace != StateMachine.CONFIRMING:
                    # The running check may have missed what was pushed. (While confirming, the
                    # confirming re-check is near anyway, and keeps its delay: the damping.)
                    next_check = min(next_check, clock() + MIN_EVENT_GAP)
                again = nudged = False
            if pending is None and clock() >= next_check:
                started = clock()
                pending = submit(self._run_check)
            # A beat due while a check runs (one started just now included) waits up to
            # BEAT_HOLD for the check's status, which then serves as the beat: one message
            # stream and one wakeup of the aggregator. A hung check still lets beats through.
            hold = BEAT_HOLD if pending is not None else 0.0
            if clock() >= next_beat + hold or self.publisher.dropped != self._beat_dropped:
                self._beat()
                next_beat = clock() + HEARTBEAT_INTERVAL
            # While a check runs, its end wakes `wait` (or is already there: then do not wait).
            wake = min(next_beat + hold, self.liveness.wake_at() if self.liveness is not None else math.inf,
                       next_check if pending is None else math.inf)
            pause = 0.0 if pending is not None and pending.done() else max(0.0, wake - clock())
            refresh, pushed = wait(pause if isinstance(self.stop, StopEvent) else min(pause, IDLE_WAKE))
            if refresh:
                self.machine.retry_briskly()  # a person asked: check now, and retry briskly again
                next_check = clock()
                again = pending is not None
            if pushed:
                # Pushed news (socket dropped, queue changed): check now, but bursts coalesce.
                next_check = min(next_check, max(clock(), self.last_check + MIN_EVENT_GAP))
                nudged = pending is not None

    @property
    def pause(self) -> float:
        """Seconds until the next check (StateMachine.pause for this probe's interval)."""
        return self.machine.pause(self.probe.interval)

    def _refresh_requested(self, control) -> bool:
        wanted = False
        for frame in drain(control, 100, 0.01):
            msg = decode(frame)
            if isinstance(msg, Rejection) or msg.topic != "control.refresh":
                continue
            target = msg.body.get("service")
            if target in (None, "", self.probe.service):
                wanted = True
        return wanted

    def _run_check(self) -> CheckResult:
        try:
            return self.probe.check()
        except ProbeError as exc:
            return self.probe.fail(exc)
        except Exception as exc:  # a probe bug must not kill the loop; say what broke
            log.exception("probe %s crashed during check", self.probe.service)
            return CheckResult(False, error=f"internal probe error: {exc.__class__.__name__}", error_kind="internal")

    def check_once(self) -> CheckResult:
        """Check and publish, synchronously (the loop does the same with a worker thread)."""
        return self._finish(self._run_check())

    def _finish(self, result: CheckResult) -> CheckResult:
        for t in result.timings:
            self.publisher.send(f"timing.{self.probe.service}", {
                "service": self.probe.service, "endpoint": t.endpoint, "duration_ms": round(t.duration_ms, 3),
                "ok": t.ok, "error_kind": t.error_kind})
        self.last_check = self.clock()
        state = self.machine.update(result)
        if self.machine.pace == StateMachine.BACKING_OFF:
            result.details["retry_in_s"] = round(self.pause, 3)
        if self.liveness is not None:
            # Knock on the port only while it is not shown up; while up, the held socket is enough.
            self.liveness.checked(result.error_kind == "refused",
                                  knocking=state in ("connecting", "disconnected", "error"))
            result.details["liveness"] = self.liveness.state
        self._publish_status(result, state)
        return result

    def _beat(self) -> None:
        self.publisher.send(f"heartbeat.{self.src}", {
            "interval": HEARTBEAT_INTERVAL, "services": [self.probe.service], "dropped": self.publisher.dropped})
        # A later drop is reported by a beat at the next turn of the loop (this one's own is not).
        self._beat_dropped = self.publisher.dropped

    def _publish_status_again(self) -> None:
        # A newcomer learns this probe's beat interval only from a heartbeat: send one first.
        self._beat()
        if self._last_status is not None:
            self.publisher.send(f"status.{self.probe.service}", self._last_status)

    def _publish_status(self, result: CheckResult, state: str) -> None:
        self._last_status = body = {
            "service": self.probe.service,
            "kind": self.probe.kind,
            "state": state,
            "url": self.probe.url,
            "required": self.required,
            "version": result.version,
            "capabilities": result.capabilities,
            "error": result.error,
            "error_kind": result.error_kind,
            "details": result.details,
            "interval": self.probe.interval,
            "timeout": self.probe.timeout,
        }
        self.publisher.send(f"status.{self.probe.service}", body)
