"""`md-health`: run the aggregator, look at its state, or start everything at once.

Every JSON it prints is strict JSON (RFC 8259: no NaN or Infinity), so any parser reads it.
"""
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
from bus.wake import StopEvent
from bus.sockets import Endpoints, endpoint_in_use

from .server import Aggregator, AlreadyRunning
from .settings import from_config
from .terminal import render, render_alerts, render_compare


def _endpoints(args) -> Endpoints:
    cfg = load(args.config)
    base = cfg.endpoints
    return Endpoints(args.events or base.events, args.snapshots or base.snapshots, args.requests or base.requests)


def _print_json(value) -> int:
    """Print strict JSON. A non-finite number cannot be written as JSON: say so instead of
    printing `NaN`, which JSON.parse and other strict parsers refuse."""
    try:
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        print("md-health: the aggregator's state holds a non-finite number (NaN or Infinity), "
              "which JSON cannot carry; nothing printed", file=sys.stderr)
        return 2
    print(text)
    return 0


def cmd_run(args) -> int:
    stop = StopEvent()  # set() also wakes the loop's poll at once
    watch_stdin(stop)
    settings = from_config(load(args.config))
    try:
        Aggregator(_endpoints(args), stop=stop, settings=settings, metrics_port=args.metrics_port).run()
    except AlreadyRunning as exc:
        print(f"md-health: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    return 0


def _synced_client(args, wait: float, **kw) -> MonitorClient:
    client = MonitorClient(_endpoints(args), **{"name": "cli", **kw})
    deadline = time.monotonic() + wait
    # The snapshot carries the records; the next heartbeat (within 1 s) adds alerts and persistence.
    while time.monotonic() < deadline and not (client.has_snapshot and client.aggregator):
        client.poll(timeout_ms=50)
    return client


def cmd_status(args) -> int:
    with _synced_client(args, args.wait) as client:
        if not client.has_snapshot:
            print(f"md-health: monitor offline: no aggregator answered at {client.endpoints.requests} "
                  f"within {args.wait:g} s. Start it with `md-health run` or `make run`.", file=sys.stderr)
            return 1
        if args.json:
            return _print_json({"services": client.services, "alerts": client.alerts,
                                "persistence": client.aggregator.get("persistence")})
        else:
            print(render(client.services, online=True, color=sys.stdout.isatty(), alerts=client.alerts,
                         persistence=client.aggregator.get("persistence")))
    return 0


def _watch_client(args, wait: float) -> MonitorClient:
    # Synced first (state and a heartbeat), so a running monitor is not drawn as "offline"
    # for the second before its next heartbeat.
    return _synced_client(args, wait, name="watch", history_range=getattr(args, "range", "5m"))


def cmd_watch(args, stop: threading.Event | None = None, client: MonitorClient | None = None) -> int:
    stop = stop or threading.Event()
    color = sys.stdout.isatty()
    with client or _watch_client(args, WATCH_SYNC_WAIT) as client:
        last = ""
        next_history = time.monotonic() + HISTORY_EVERY
        try:
            while not stop.is_set():
                client.poll(timeout_ms=100)
                if time.monotonic() >= next_history:  # trends come with snapshot replies only
                    client.request_snapshot()
                    next_history = time.monotonic() + HISTORY_EVERY
                header = time.strftime("Movie Director backend health — %H:%M:%S   (Ctrl+C to quit)")
                screen = render(client.services, online=client.online, color=color, header=header,
                                history=client.history, alerts=client.alerts,
                                persistence=client.aggregator.get("persistence"))
                if screen != last:
                    # Redraw in place: home the cursor and clear below, so nothing scrolls.
                    sys.stdout.write("\033[H\033[J" + screen + "\n" if color else screen + "\n\n")
                    sys.stdout.flush()
                    last = screen
                stop.wait(args.every)
        except KeyboardInterrupt:
            pass
    return 0


HISTORY_EVERY = 5.0  # seconds between history refreshes in `watch`
WATCH_SYNC_WAIT = 3.0  # seconds `watch` waits for a snapshot and a heartbeat (1 s apart) before its first screen


def _require(client: MonitorClient, args) -> bool:
    if client.has_snapshot:
        return True
    print(f"md-health: monitor offline: no aggregator answered at {client.endpoints.requests} "
          f"within {args.wait:g} s. Start it with `md-health run` or `make run`.", file=sys.stderr)
    return False


def cmd_compare(args) -> int:
    client = MonitorClient(_endpoints(args), name="cli", history_range=args.window)
    with client:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline and not client.has_snapshot:
            client.poll(timeout_ms=50)
        if not _require(client, args):
            return 1
        names = [n for n in (args.services or client.services) if n in client.services]
        unknown = [n for n in (args.services or []) if n not in client.services]
        if unknown:
            print(f"md-health: unknown service(s): {', '.join(unknown)} "
                  f"(known: {', '.join(sorted(client.services)) or 'none'})", file=sys.stderr)
            return 2
        print(render_compare({n: client.services[n] for n in names}, args.window))
    return 0


def cmd_alerts(args) -> int:
    with _synced_client(args, args.wait) as client:
        if not _require(client, args):
            return 1
        if args.json:
            return _print_json(client.alerts)
        else:
            print(render_alerts(client.alerts))
    return 0


def cmd_export(args) -> int:
    """Ask the running aggregator; if none answers, read the history file directly."""
    content = None
    with MonitorClient(_endpoints(args), name="export") as client:
        deadline = time.monotonic() + args.wait
        rid = None
        while time.monotonic() < deadline:
            client.poll(timeout_ms=50)
            if client.has_snapshot and rid is None:
                rid = client.export(args.format, args.tier, args.since, args.service)
            if rid is not None and rid in client.replies:
                reply = client.replies[rid]
                if not reply.get("ok"):
                    print(f"md-health: {reply.get('error', 'export failed')}", file=sys.stderr)
                    return 2
                content, rows = reply["content"], reply.get("rows", 0)
                break
    if content is None:
        content, rows = _export_from_file(args)
        if content is None:
            return 1 if rows is None else 2
    if args.output and args.output != "-":
        from pathlib import Path

        try:
            Path(args.output).write_text(content, encoding="utf-8", newline="")
        except OSError as exc:
            print(f"md-health: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"md-health: wrote {rows} rows ({args.format}, tier {args.tier}, last {args.since}) to {args.output}",
              file=sys.stderr)
    else:
        sys.stdout.write(content)
    return 0


def _export_from_file(args):
    from . import export as exporter
    from .engine import Engine
    from .store import Store, StoreUnavailable

    settings = from_config(load(args.config))
    path = settings.resolved_data_dir()
    if not (path / "metrics.sqlite3").exists():
        print(f"md-health: no aggregator answered within {args.wait:g} s and there is no history file in "
              f"{path}. Start it with `md-health run`.", file=sys.stderr)
        return None, None
    print(f"md-health: no aggregator answered; exporting from the history file in {path}", file=sys.stderr)
    engine = Engine(time.time, settings)
    try:
        store = Store(path)
        store.restore(engine)
        store.close()
        return exporter.export(engine, args.format, args.tier, args.since, args.service)
    except (StoreUnavailable, ValueError) as exc:
        print(f"md-health: export: {exc}", file=sys.stderr)
        return None, 0


UP_ASK_WAIT = 5.0  # seconds a monitor already holding the endpoints gets to answer `up`'s snapshot request


def cmd_up(args) -> int:
    """Aggregator + probe supervisor as children, live view in the foreground; or, when a
    monitor already runs on these endpoints (one Blender started, say), just its live view:
    a second aggregator could not bind, and a second set of probes would publish as the
    same sources."""
    endpoints = _endpoints(args)
    held = [ep for ep in (endpoints.events, endpoints.snapshots, endpoints.requests) if endpoint_in_use(ep)]
    if held:
        return _show_running(args, endpoints, held)
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
    print(f"Started the aggregator and probes; their logs go to {log_path}", flush=True)
    try:
        return cmd_watch(args)
    finally:
        for child in reversed(children):
            stop_child(child)
        log_file.close()


def _show_running(args, endpoints: Endpoints, held: list[str]) -> int:
    """Something listens on our endpoints: watch it if it answers as an aggregator, else refuse."""
    client = _watch_client(args, UP_ASK_WAIT)
    instance = client.aggregator.get("instance")
    where = f"{endpoints.events}, {endpoints.snapshots}, {endpoints.requests}"
    if not client.has_snapshot:
        client.close()
        print(f"md-health: {', '.join(held)} {'is' if len(held) == 1 else 'are'} in use, but nothing there answered "
              f"as a Movie Director monitor (no snapshot reply at {endpoints.requests} within {UP_ASK_WAIT:g} s): "
              "another program holds the port. Nothing was started. Stop that program, or choose other endpoints "
              "with --events/--snapshots/--requests.", file=sys.stderr)
        return 3
    print(f"A monitor is already running at {where}{f' (instance {instance})' if instance else ''}; "
          "showing it. Nothing new was started.", flush=True)
    return cmd_watch(args, client=client)


def cmd_auth(args, rest: list[str]) -> int:
    """Local authentication and remote keys: bus.security's own commands (docs/security.md)."""
    from bus import security

    if args.config:  # every process finds the keys from the environment, never from its --config
        print("md-health: auth ignores --config: the key folder is curve/ next to the default config "
              "(MD_HEALTH_CONFIG), or MD_HEALTH_CURVE_DIR", file=sys.stderr)
    return security.main(rest, prog="md-health auth")


def cmd_discover(args, rest: list[str]) -> int:
    """Look for backends on their default ports: probes.discover's own command line (contract C5)."""
    import importlib

    try:
        discover = importlib.import_module("probes.discover")
    except ModuleNotFoundError as exc:
        if exc.name not in ("probes.discover", "probes"):
            raise  # discover itself is there but needs something missing: that traceback says what
        print("md-health: discover is not available in this installation (probes/discover.py is missing)",
              file=sys.stderr)
        return 2
    if args.config and "--config" not in rest:
        rest = ["--config", args.config, *rest]
    return discover.cli_main(rest)


# Subcommands whose own parser reads the rest of the command line.
PASS_THROUGH = {"auth": cmd_auth, "discover": cmd_discover}


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
    run = sub.add_parser("run", help="run the aggregator in the foreground")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus/OpenMetrics on http://127.0.0.1:PORT/metrics "
                          "(default: [aggregator] metrics_port, 0 = off)")
    st = sub.add_parser("status", help="print the current state once")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--wait", type=float, default=3.0, help="seconds to wait for the aggregator")
    for name, help_text in (("watch", "live terminal view with p95 / success trends"),
                            ("up", "start aggregator and probes, then watch")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--every", type=float, default=0.25, help="redraw period in seconds")
        p.add_argument("--range", default="5m", help="trend window: 5m, 1h or 24h (default 5m)")
    ex = sub.add_parser("export", help="write history buckets as CSV or JSON (columns: docs/metrics.md)")
    ex.add_argument("--format", choices=("csv", "json"), default="csv")
    ex.add_argument("--tier", default="1m", help="resolution: 1s, 10s or 1m (default 1m)")
    ex.add_argument("--since", default="24h", help="how far back: e.g. 10m, 6h, 24h (default 24h)")
    ex.add_argument("--service", help="one service only (default: all)")
    ex.add_argument("-o", "--output", help="file to write (default: standard output)")
    ex.add_argument("--wait", type=float, default=3.0, help="seconds to wait for the aggregator")
    cmp_ = sub.add_parser("compare", help="services side by side")
    cmp_.add_argument("services", nargs="*", help="services to compare (default: all)")
    cmp_.add_argument("--window", default="5m", help="5m, 1h or 24h (default 5m)")
    cmp_.add_argument("--wait", type=float, default=3.0, help="seconds to wait for the aggregator")
    al = sub.add_parser("alerts", help="list active alerts")
    al.add_argument("--json", action="store_true", help="machine-readable output")
    al.add_argument("--wait", type=float, default=3.0, help="seconds to wait for the aggregator")
    sub.add_parser("auth", add_help=False,
                   help="local authentication: `auth init` switches it on, `auth status` checks it (docs/security.md)")
    sub.add_parser("discover", add_help=False, help="find backends on their default ports (--json, --write)")
    args, rest = parser.parse_known_args(argv)
    if args.command in PASS_THROUGH:
        try:
            return PASS_THROUGH[args.command](args, rest)
        except ConfigError as exc:
            print(f"md-health: {exc}", file=sys.stderr)
            return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    commands = {"run": cmd_run, "status": cmd_status, "watch": cmd_watch, "up": cmd_up, "export": cmd_export,
                "compare": cmd_compare, "alerts": cmd_alerts}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"md-health: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C while waiting for the aggregator: no traceback
        return 130


if __name__ == "__main__":
    sys.exit(main())
