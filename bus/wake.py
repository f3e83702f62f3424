"""Waking a thread that waits in zmq.Poller.poll from another thread.

A `Wakeup` is a socket pair: `wake()` (any thread) writes a byte to one end, the waiting
thread registers the other end in its poller and `clear()`s it when it is ready. A
`StopEvent` is a threading.Event whose `set()` also wakes, so a loop that sleeps until its
next due work (seconds, not a short poll) still stops at once on its lifeline, Ctrl+C or
SIGTERM. socket.socketpair exists on every platform (Windows emulates it on loopback) and
zmq.Poller accepts its sockets everywhere.
"""
from __future__ import annotations

import socket
import threading


class Wakeup:
    def __init__(self) -> None:
        self.rx, self._tx = socket.socketpair()
        self.rx.setblocking(False)
        self._tx.setblocking(False)

    def wake(self) -> None:
        try:
            self._tx.send(b"\0")
        except OSError:  # closed (the loop ended) or full (a wakeup is pending anyway)
            pass

    def clear(self) -> None:
        try:
            while self.rx.recv(64):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def close(self) -> None:
        self.rx.close()
        self._tx.close()


class StopEvent(threading.Event):
    """A stop flag whose set() wakes the poller that registered `wakeup.rx`."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeup = Wakeup()

    def set(self) -> None:
        super().set()
        self.wakeup.wake()
