"""Command line for probes: run one probe, or all enabled ones under a supervisor."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from bus.config import ConfigError, _http_url, load
from bus.lifeline import watch_stdin
from bus.wake import StopEvent

# The probe loop (zmq, http.client) and a probe's module are imported only by the command
# that runs them. `run-all` on Linux imports them once to fork its children from
# (probes/supervisor.py), and each child then runs `main(["run", <service>])` like a spawned one.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="md-probes", description="Movie Director health probes.")
    parser.add_argument("--config", help="TOML config file (default: the platform config dir)")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="run the probe for one service")
    one.add_argument("service", help="service name from the config, e.g. comfyui")
    one.add_argument("--url", help="override the service URL")
    one.add_argument("--interval", type=float, help="seconds between checks")
    one.add_argument("--timeout", type=float, help="seconds a check may take")
    sub.add_parser("run-all", help="run every enabled probe, restarting any that crash")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"md-probes: {exc}", file=sys.stderr)
        return 2

    stop = StopEvent()  # set() also wakes the probe's poll at once
    watch_stdin(stop)
    # SIGTERM (a service manager, `kill`) stops as cleanly as Ctrl+C or the lifeline.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.command == "run-all":
        for warning in cfg.warnings:
            logging.getLogger("probes").warning("%s", warning)
        from .supervisor import supervise

        return supervise(cfg, args.config, stop)

    if args.service not in cfg.services:
        print(f"md-probes: no service {args.service!r} in the config (known: {', '.join(cfg.services)})",
              file=sys.stderr)
        return 2
    settings = dict(cfg.services[args.service])
    for key in ("url", "interval", "timeout"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.url is not None:
        try:
            settings["url"] = _http_url(args.url)
        except ValueError as exc:
            print(f"md-probes: --url {exc}", file=sys.stderr)
            return 2
    if settings.get("flavour") == "llm":
        settings["llm"] = cfg.sections.get("llm") or {}
        settings["warnings"] = cfg.warnings
    from .base import ProbeRunner
    from .registry import make_probe

    try:
        probe = make_probe(args.service, settings)
    except ValueError as exc:
        print(f"md-probes: {exc}", file=sys.stderr)
        return 2
    runner = ProbeRunner(probe, cfg.endpoints, required=settings.get("required", False),
                         failures_to_down=settings.get("failures_to_down", 2), stop=stop)
    try:
        runner.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
