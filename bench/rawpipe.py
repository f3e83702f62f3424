"""The same-run baseline: a raw pyzmq SUB that only decodes, run as its own process.

It binds the same sockets the aggregator binds (same options, from bus/sockets.py),
drains with the same budget, splits the topic and msgpack-decodes each frame exactly like
the aggregator must, and does nothing else. The one addition is the end-of-run marker:
a frame on `status.bench-mark` is echoed as `snapshot.bench-mark`, which is what the
aggregator does too, so both are timed the same way.

    python -m bench.rawpipe --events tcp://127.0.0.1:P1 --snapshots tcp://127.0.0.1:P2
"""
from __future__ import annotations

import argparse
import threading

import msgpack
import zmq

from bus.lifeline import watch_stdin
from bus.sockets import close, drain, new_context, pub_socket, sub_socket

MARK_TOPIC = b"status.bench-mark\x00"
DRAIN_BUDGET = (5000, 0.05)  # the aggregator's (aggregator/server.py)


def run(events: str, snapshots: str, stop: threading.Event) -> None:
    ctx = new_context()
    sub = sub_socket(ctx, events, bind=True)
    pub = pub_socket(ctx, snapshots, bind=True)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    unpackb = msgpack.unpackb
    try:
        while not stop.is_set():
            if not poller.poll(200):
                continue
            for frame in drain(sub, *DRAIN_BUDGET):
                cut = frame.find(b"\x00", 0, 129)
                env = unpackb(frame[cut + 1:], raw=False, strict_map_key=True)
                if frame.startswith(MARK_TOPIC):
                    pub.send(b"snapshot.bench-mark\x00" + msgpack.packb(env))
    finally:
        close(sub, pub)
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True)
    parser.add_argument("--snapshots", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    watch_stdin(stop)
    try:
        run(args.events, args.snapshots, stop)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
