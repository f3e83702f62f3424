#!/usr/bin/env python3
"""A minimal subscriber: print the full state at once (Clone pattern), then every change.

    python examples/subscriber.py            # live, until Ctrl+C
    python examples/subscriber.py --once     # print the current state and exit

It uses only `bus/` (pyzmq + msgpack). docs/protocol.md describes the same steps for
writing a subscriber in another language.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bus.client import MonitorClient  # noqa: E402
from bus.sockets import Endpoints  # noqa: E402


def line(record: dict) -> str:
    stats = record.get("stats", {})
    p95 = stats.get("p95_ms")
    return (f"{record['service']:<10} {record.get('state', '?'):<13} version={record.get('version') or '-'} "
            f"p95={'-' if p95 is None else f'{p95:.1f}ms'} error={record.get('error') or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="print the current state and exit")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the aggregator")
    args = parser.parse_args()
    with MonitorClient(Endpoints.from_env(), name="example") as client:
        deadline = time.monotonic() + args.wait
        while not client.has_snapshot and time.monotonic() < deadline:
            client.poll(timeout_ms=50)
        if not client.has_snapshot:
            print(f"no aggregator answered at {client.endpoints.requests}", file=sys.stderr)
            return 1
        for name in sorted(client.services):
            print(line(client.services[name]), flush=True)
        if args.once:
            return 0
        seen = {k: dict(v) for k, v in client.services.items()}
        try:
            while True:
                client.poll(timeout_ms=200)
                for name, record in client.services.items():
                    if seen.get(name, {}).get("state") != record.get("state") or \
                            seen.get(name, {}).get("error") != record.get("error"):
                        print(time.strftime("%H:%M:%S ") + line(record), flush=True)
                        seen[name] = dict(record)
                if not client.online:
                    print(time.strftime("%H:%M:%S ") + "monitor offline", flush=True)
                    while not client.online:
                        client.poll(timeout_ms=200)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
