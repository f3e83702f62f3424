"""A cheap liveness channel to a backend on this machine: one held idle TCP connection.

When a backend's process dies, the kernel closes its sockets at once, so a connection we
hold to its port becomes readable (EOF or reset) within milliseconds, long before the next
poll would notice. A server may also close an idle connection itself (a keep-alive
timeout), so a close alone proves nothing: we reconnect at once, and only "closed, and the
reconnect refused" means death. While the backend is down, a non-blocking connect every
KNOCK_EVERY seconds (no HTTP, no thread) reveals the moment its port listens again. Either
news only asks the probe loop for a full check now; the damping of the shown state is the
full check's, unchanged.

`Liveness` is the pure state machine (clock injected); `LivenessChannel` is the thin shell
that owns the socket and keeps its fd registered in the probe loop's zmq.Poller.
"""
from __future__ import annotations

import errno
import ipaddress
import math
import socket
import time
from typing import Callable
from urllib.parse import urlsplit

import zmq

KNOCK_EVERY = 0.25  # seconds between connect attempts while the backend is down (only then)
CONNECT_TIMEOUT = 1.0  # a connect still pending after this (a full accept queue) counts as refused
MIN_HOLD = 1.0  # a connection closed sooner than this after it was accepted was "closed at once"
FIRST_REST = 0.05  # rest before reconnecting after the second close-at-once in a row, doubling to
                   # MIN_HOLD: a server that accepts and closes at once cannot spin the probe. The
                   # first is retried at once: a dying process's kernel may accept one last connect
                   # into the backlog and reset it a moment later, and that must read as death.

# connect_ex's "started, not finished yet" (Windows says WSAEWOULDBLOCK).
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", errno.EAGAIN)}

# What a finished connect can say.
ACCEPTED, REFUSED = "accepted", "refused"


def local_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a URL whose host is this machine's loopback, else None: a held
    connection to a remote host says nothing certain (a dead machine never closes it)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not host or parts.scheme not in ("http", "https"):
        return None
    if host == "localhost":
        return "127.0.0.1", port
    try:
        return (host, port) if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


class Liveness:
    """The channel's named states, and what each event means for the probe.

    - CONNECTING: a connect is in flight (the first one, a reconnect after a close, or a knock);
    - HELD: a connection is held; its close means "reconnect now", not yet "dead";
    - RESTING: connections closed right after they were accepted, again and again; reconnect
      after a rest that doubles from FIRST_REST up to MIN_HOLD;
    - DOWN: the port refused; knock again every KNOCK_EVERY seconds while knocking is wanted
      (the probe is not shown connected), else not at all (the full checks go on).

    The event methods return True when the probe should run a full check now: a held
    connection closed and the reconnect was refused (death), or a knock was accepted (back).
    """

    CONNECTING, HELD, RESTING, DOWN = "connecting", "held", "resting", "down"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.state = self.CONNECTING
        self.knocking = True  # the probe is not shown connected: look for the port's return
        self._from = None  # the state the connect in flight started from
        self._since = clock()  # when the connect in flight started
        self._next_knock = math.inf  # when DOWN knocks, or RESTING reconnects
        self._held_at = -math.inf
        self._quick_closes = 0  # connections in a row closed within MIN_HOLD of being accepted

    def wake_at(self) -> float:
        """The monotonic time the shell must next act (start a knock, give up a connect)."""
        if self.state == self.CONNECTING:
            return self._since + CONNECT_TIMEOUT
        if (self.state == self.DOWN and self.knocking) or self.state == self.RESTING:
            return self._next_knock
        return math.inf

    def connect_due(self) -> bool:
        waiting = (self.state == self.DOWN and self.knocking) or self.state == self.RESTING
        return waiting and self.clock() >= self._next_knock

    def connect_started(self) -> None:
        self._from = self.state
        self.state = self.CONNECTING
        self._since = self.clock()

    def connect_timed_out(self) -> bool:
        return self.state == self.CONNECTING and self.clock() >= self._since + CONNECT_TIMEOUT

    def finished(self, outcome: str) -> bool:
        """A connect finished: ACCEPTED or REFUSED. True: check now."""
        came_from, self._from = self._from, None
        if outcome == ACCEPTED:
            self.state = self.HELD
            self._held_at = self.clock()
            return came_from == self.DOWN  # the port listens again
        self.state = self.DOWN
        self._next_knock = self.clock() + KNOCK_EVERY
        # It was held, closed, and now refuses: the process died.
        return came_from in (self.HELD, self.RESTING)

    def closed(self) -> bool:
        """The held connection closed (EOF or reset). True: reconnect now (a refusal then
        reads as death); False: rest first (see FIRST_REST)."""
        if self.clock() - self._held_at >= MIN_HOLD:
            self._quick_closes = 0
            return True
        self._quick_closes = min(self._quick_closes + 1, 32)
        if self._quick_closes == 1:
            return True
        self.state = self.RESTING
        self._next_knock = self.clock() + min(MIN_HOLD, FIRST_REST * 2.0 ** (self._quick_closes - 2))
        return False

    def set_knocking(self, knocking: bool) -> None:
        """The probe's shown state changed: knock only while it is not connected."""
        if knocking and not self.knocking and self.state == self.DOWN:
            self._next_knock = self.clock()  # the backend just went down: look at once
        self.knocking = knocking

    def stale(self) -> None:
        """A full check was refused while a connection was held: the server stopped listening
        but kept its open connections (a graceful drain). What is held proves nothing now."""
        if self.state == self.HELD:
            self.state = self.DOWN
            self._next_knock = self.clock() + KNOCK_EVERY


class LivenessChannel:
    """The shell: a non-blocking socket to (host, port), its fd kept in `poller` with the
    events its state needs (POLLOUT while connecting, POLLIN while held, none while down).
    Only the probe loop's thread calls it."""

    def __init__(self, address: tuple[str, int], poller: zmq.Poller,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.poller = poller
        self.machine = Liveness(clock)
        self.sock: socket.socket | None = None
        self._start_connect()

    @property
    def state(self) -> str:
        return self.machine.state

    def wake_at(self) -> float:
        return self.machine.wake_at()

    def checked(self, refused: bool, knocking: bool) -> None:
        """What a full check found: whether its connection was refused, and whether the probe
        is now shown not connected (then knock on the port while it is down)."""
        if refused and self.machine.state == Liveness.HELD:
            self._drop()
            self.machine.stale()
        self.machine.set_knocking(knocking)

    def handle(self, ready: dict) -> bool:
        """Act on what the poll returned (`ready`: dict(poller.poll()), where a native socket
        appears by its fd) and on due timers. True: the probe should run a full check now."""
        m = self.machine
        events = ready.get(self.sock.fileno(), 0) if self.sock is not None else 0
        check_now = False
        if m.state == Liveness.CONNECTING and (events or m.connect_timed_out()):
            check_now = self._finish_connect(events)
        elif m.state == Liveness.HELD and events and self._peer_closed():
            self._drop()
            if m.closed():
                check_now = self._start_connect()  # refused at once: dead; in flight: a later poll says
        if m.connect_due():
            check_now |= self._start_connect()
        return check_now

    def close(self) -> None:
        self._drop()

    # -- the socket ---------------------------------------------------------------------
    def _start_connect(self) -> bool:
        """Start a non-blocking connect. On loopback it often finishes at once; then the
        machine's verdict is returned, else False (the poller reports the outcome)."""
        self.machine.connect_started()
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return self.machine.finished(REFUSED)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code == 0:
            self.sock = sock
            self.poller.register(sock, zmq.POLLIN)
            return self.machine.finished(ACCEPTED)
        if code in _IN_PROGRESS:
            self.sock = sock
            self.poller.register(sock, zmq.POLLOUT)
            return False
        sock.close()
        return self.machine.finished(REFUSED)

    def _finish_connect(self, events: int) -> bool:
        sock = self.sock
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if (sock is not None and events) else -1
        if code == 0 and not events & zmq.POLLERR:
            self.poller.register(sock, zmq.POLLIN)  # re-registering changes the events watched
            return self.machine.finished(ACCEPTED)
        self._drop()
        return self.machine.finished(REFUSED)

    def _peer_closed(self) -> bool:
        """Readable while held: EOF or reset means closed. A server that speaks first (none of
        ours do) would be drained, and the connection kept."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return not data

    def _drop(self) -> None:
        if self.sock is not None:
            try:
                self.poller.unregister(self.sock)
            except KeyError:
                pass
            self.sock.close()
            self.sock = None
