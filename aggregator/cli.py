"""`md-health`: run the aggregator, look at its state, or start everything at once."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

from bus.client import MonitorClient
from bus.config import ConfigError, load
from bus.lifeline import spawn, stop as stop_child, watch_stdin
from bus.sockets import Endpoints

from .server import Aggregator, AlreadyRunning
from .terminal import render


def _endpoints(args) -> Endpoints:
    cfg = load(args.config)
    base = cfg.endpoints
    return Endpoints(args.events or base.events, args.snapshots or base.snapshots, args.requests or base.requests)


def cmd_run(args) -> int:
    stop = threading.Event()
    watch_stdin(stop)
    try:
        Aggregator(_endpoints(args), stop=stop).run()
    except AlreadyRunning as exc:
        print(f"md-health: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    return 0


def _synced_client(args, wait: float) -> MonitorClient:
    client = MonitorClient(_endpoints(args), name="cli")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not client.has_snapshot:
        client.poll(timeout_ms=50)
    return client


def cmd_status(args) -> int:
    with _synced_client(args, args.wait) as client:
        if not client.has_snapshot:
            print(f"md-health: monitor offline: no aggregator answered at {client.endpoints.requests} "
                  f"within {args.wait:g} s. Start it with `md-health run` or `make run`.", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"services": client.services, "alerts": client.alerts}, indent=2, sort_keys=True))
        else:
            print(render(client.services, online=True, color=sys.stdout.isatty()))
    return 0


def cmd_watch(args, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    color = sys.stdout.isatty()
    with MonitorClient(_endpoints(args), name="watch") as client:
        last = ""
        try:
            while not stop.is_set():
                client.poll(timeout_ms=100)
                header = time.strftime("Movie Director backend health — %H:%M:%S   (Ctrl+C to quit)")
                screen = render(client.services, online=client.online, color=color, header=header)
                if screen != last:
                    # Redraw in place: home the cursor and clear below, so nothing scrolls.
                    sys.stdout.write("\033[H\033[J" + screen + "\n" if color else screen + "\n\n")
                    sys.stdout.flush()
                    last = screen
                stop.wait(args.every)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_up(args) -> int:
    """Aggregator + probe supervisor as children, live view in the foreground."""
    cfg_args = ["--config", args.config] if args.config else []
    from pathlib import Path

    from platformdirs import user_log_dir

    py = sys.executable
    log_path = Path(user_log_dir("movie-director-health")) / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", encoding="utf-8")  # children's logs must not scribble over the view
    out = {"stdout": log_file, "stderr": log_file}
    children = [spawn([py, "-m", "aggregator", *cfg_args, *_endpoint_args(args), "run"], **out),
                spawn([py, "-m", "probes", *cfg_args, "run-all"], **out)]
    print(f"Started the aggregator and probes; their logs go to {log_path}")
    try:
        return cmd_watch(args)
    finally:
        for child in reversed(children):
            stop_child(child)
        log_file.close()


def _endpoint_args(args) -> list[str]:
    out = []
    for key in ("events", "snapshots", "requests"):
        if getattr(args, key):
            out += [f"--{key}", getattr(args, key)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="md-health", description="Movie Director backend-health aggregator.")
    parser.add_argument("--config", help="TOML config file (default: the platform config dir)")
    parser.add_argument("--events", help="events endpoint (default tcp://127.0.0.1:5581)")
    parser.add_argument("--snapshots", help="snapshots endpoint (default tcp://127.0.0.1:5582)")
    parser.add_argument("--requests", help="requests endpoint (default tcp://127.0.0.1:5583)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the aggregator in the foreground")
    st = sub.add_parser("status", help="print the current state once")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--wait", type=float, default=3.0, help="seconds to wait for the aggregator")
    for name, help_text in (("watch", "live terminal view"), ("up", "start aggregator and probes, then watch")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--every", type=float, default=0.25, help="redraw period in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return {"run": cmd_run, "status": cmd_status, "watch": cmd_watch, "up": cmd_up}[args.command](args)
    except ConfigError as exc:
        print(f"md-health: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
