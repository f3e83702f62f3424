"""bus.wake: a loop that sleeps until its next due work (up to a second, aggregator and
probes alike) still stops at once, because a StopEvent's set() wakes its poll."""
from __future__ import annotations

import threading
import time

import zmq

from bus.wake import StopEvent, Wakeup


def _poll_forever(sock) -> float:
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    t0 = time.monotonic()
    assert poller.poll(60_000)  # 60 s: nothing but the wakeup can end it sooner
    return time.monotonic() - t0


def test_stop_event_set_from_another_thread_ends_a_long_poll():
    stop = StopEvent()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    waited = _poll_forever(stop.wakeup.rx)
    assert stop.is_set() and waited < 30  # woken, not timed out (the poll allows 60 s)
    stop.wakeup.close()


def test_wakeups_coalesce_and_clear():
    w = Wakeup()
    for _ in range(10_000):  # more than the pair's buffer: the extra wakeups are dropped, never block
        w.wake()
    assert _poll_forever(w.rx) < 30
    w.clear()
    assert zmq.Poller().poll(0) == [] and not dict(_poller(w.rx).poll(50))
    w.close()
    w.wake()  # after close: ignored, no error (a late check finishing after the loop ended)


def _poller(sock) -> zmq.Poller:
    p = zmq.Poller()
    p.register(sock, zmq.POLLIN)
    return p
