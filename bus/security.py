"""Who may talk to the aggregator: loopback only, unless CURVE keys are set up (docs/security.md).

Without keys every endpoint must be loopback (127.0.0.0/8, ::1, localhost, ipc://, inproc://):
binding anything else is refused, so the bus is never open on the LAN by accident.

With keys, every socket uses CURVE (encryption plus authentication) through `zmq.auth`:
the aggregator's sockets (the ones that bind) are CURVE servers and accept only clients
whose public key is in the allow-list; probes and subscribers (the ones that connect) are
CURVE clients. A client without an allowed key completes no handshake, so it can neither
subscribe nor inject events. The key folder, found in MD_HEALTH_CURVE_DIR or else in
`curve/` next to the config file:

    server.key, server.key_secret   the aggregator's key pair (secret only on its machine)
    client.key, client.key_secret   this machine's client key pair (probes, CLI, Blender)
    authorized/*.key                 public keys the aggregator accepts (the allow-list)

`md-health auth init` (the same as `python -m bus.security init`) creates the folder for
the aggregator's machine in the user's config folder, which switches local authentication
on: every process of that user finds it there (it sits next to their config), another
user does not. `md-health auth add-client NAME` makes the folder to copy to a remote box.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger("bus.security")

ENV_DIR = "MD_HEALTH_CURVE_DIR"


class InsecureEndpoint(zmq.ZMQError):
    """Raised instead of binding a non-loopback endpoint in the clear, or when keys are missing.

    A ZMQError, so every caller that already handles a failed bind reports it as one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(13, message)  # EACCES
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


def is_loopback(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False  # pgm://, udp://, ws://: never loopback-only
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: may face the network


def curve_dir() -> Path | None:
    """The key folder if CURVE is configured, else None (loopback-only mode)."""
    named = os.environ.get(ENV_DIR)
    if named:
        return Path(named)
    from .config import default_path  # late import: config imports sockets, which imports us

    folder = default_path().parent / "curve"
    return folder if (folder / "server.key").exists() else None


@dataclass(frozen=True)
class Keys:
    folder: Path

    def _need(self, name: str) -> Path:
        path = self.folder / name
        if not path.exists():
            raise InsecureEndpoint(f"CURVE is configured ({self.folder}) but {path.name} is missing there; "
                                   "see docs/security.md (md-health auth init / add-client)")
        return path

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = zmq.auth.load_certificate(self._need(f"{name}.key_secret"))
        if not secret:
            raise InsecureEndpoint(f"{self.folder / (name + '.key_secret')} holds no secret key")
        return public, secret

    def server_public(self) -> bytes:
        return zmq.auth.load_certificate(self._need("server.key"))[0]

    @property
    def authorized(self) -> Path:
        return self.folder / "authorized"


def setup_problem(folder: Path | None = None) -> str | None:
    """Why the configured key folder cannot work, checked once at start-up (config load),
    so a bad MD_HEALTH_CURVE_DIR gives a clear error instead of a traceback later."""
    folder = folder or curve_dir()
    if folder is None:
        return None
    if not folder.is_dir():
        return f"CURVE key folder {folder} does not exist ({ENV_DIR} or curve/ next to the config); see docs/security.md"
    keys = Keys(folder)
    try:
        keys.pair("client")  # every machine runs clients (probes, CLI, Blender)
        keys.server_public()
        if (folder / "server.key_secret").exists():  # the aggregator's machine
            keys.pair("server")
    except InsecureEndpoint as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"CURVE keys in {folder} cannot be read ({exc.__class__.__name__}: {exc}); see docs/security.md"
    return None


# One ZAP handler per context, started before the first CURVE server socket binds (without
# a handler libzmq would accept any client that knows the server's public key).
_handlers: dict[int, "ZapHandler"] = {}
_handlers_lock = threading.Lock()


class ZapHandler(threading.Thread):
    """zmq.auth's Authenticator, driven by a plain blocking thread.

    Not ThreadAuthenticator: its asyncio loop keeps the ZAP socket open when the owner
    calls Context.term(), which then hangs. A blocking recv raises ETERM instead, and this
    thread closes its socket and ends, so shutdown stays instant.
    """

    def __init__(self, ctx: zmq.Context, authorized: Path) -> None:
        super().__init__(name="zap", daemon=True)
        self.auth = zmq.auth.Authenticator(ctx, log=log)
        self.auth.start()  # binds inproc://zeromq.zap.01 now, before any server socket binds
        self.auth.configure_curve(domain="*", location=str(authorized))
        self.allowed = len(self.auth.certs.get("*", {}))
        self.ctx_id = id(ctx)

    def run(self) -> None:
        sock = self.auth.zap_socket
        try:
            while True:
                msg = sock.recv_multipart()
                coro = self.auth.handle_zap_message(msg)
                try:  # no awaits on the CURVE-with-allow-list path: one step finishes it
                    coro.send(None)
                except StopIteration:
                    pass
                else:
                    coro.close()
                    # The ZAP reply of RFC 27 (version, request id, status, text, user, metadata),
                    # sent on the public socket API: no private pyzmq helper to break on upgrade.
                    sock.send_multipart([b"1.0", msg[1], b"500", b"internal error", b"", b""])
        except zmq.ZMQError:
            pass  # ETERM: the context is shutting down
        finally:
            sock.close(linger=0)
            with _handlers_lock:
                _handlers.pop(self.ctx_id, None)


def _ensure_handler(ctx: zmq.Context, keys: Keys) -> None:
    with _handlers_lock:
        if id(ctx) in _handlers:
            return
        handler = ZapHandler(ctx, keys.authorized)
        _handlers[id(ctx)] = handler
    if handler.allowed == 0:
        log.warning("CURVE: no allowed client keys in %s; every client will be refused", keys.authorized)
    handler.start()


def secure(sock: zmq.Socket, endpoint: str, bind: bool) -> None:
    """Apply CURVE to a socket before it binds or connects, or refuse an unsafe bind."""
    folder = curve_dir()
    if folder is None:
        if bind and not is_loopback(endpoint):
            raise InsecureEndpoint(
                f"refusing to bind {endpoint} without CURVE: only loopback addresses are allowed in the clear. "
                f"Set up keys (md-health auth init, docs/security.md) or bind 127.0.0.1.")
        return
    keys = Keys(folder)
    if bind:
        public, secret = keys.pair("server")
        _ensure_handler(sock.context, keys)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret
    else:
        public, secret = keys.pair("client")
        sock.curve_serverkey = keys.server_public()
        sock.curve_publickey, sock.curve_secretkey = public, secret


# -- key management -----------------------------------------------------------------
# The key folder is the user's alone: the folder 700, every file in it 600 (the public
# halves too, so nobody else even learns which keys are allowed). On Windows chmod only
# sets the read-only flag; what protects the keys there is the ACL of the user's profile
# folder (%LOCALAPPDATA%, where the config lives), which only that user, SYSTEM and
# Administrators can open.
def _private(path: Path) -> None:
    try:
        path.chmod(stat.S_IRWXU if path.is_dir() else stat.S_IRUSR | stat.S_IWUSR)
    except OSError:
        pass  # Windows ACLs: see above


def _private_dir(folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private(folder)  # mkdir's mode is masked by the umask, and an existing folder keeps its own
    return folder


def _new_pair(folder: Path, name: str) -> Path:
    _private_dir(folder)
    public_file, secret_file = zmq.auth.create_certificates(str(folder), name)
    _private(Path(public_file))
    _private(Path(secret_file))
    return Path(secret_file)


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    _private(target)


def loose_permissions(folder: Path) -> list[Path]:
    """Files or folders in the key folder that other users can reach (POSIX bits only)."""
    if os.name != "posix" or not folder.is_dir():
        return []
    paths = [folder, *folder.rglob("*")]
    return [p for p in paths if p.stat().st_mode & 0o077]


def default_dir() -> Path:
    from .config import default_path

    return curve_dir() or default_path().parent / "curve"


def init(folder: Path) -> None:
    """Keys for the aggregator's machine: server pair, a local client pair, the allow-list."""
    if (folder / "server.key_secret").exists():
        raise SystemExit(f"{folder} already holds a server key; not overwriting it")
    _new_pair(folder, "server")
    _new_pair(folder, "client")
    _private_dir(folder / "authorized")
    _copy(folder / "client.key", folder / "authorized" / "local.key")


def add_client(folder: Path, name: str) -> Path:
    """Make `clients/NAME/` (copy it to the remote box as its key folder) and allow it."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit("a client name is letters, digits, - and _")
    out = folder / "clients" / name
    if out.exists():
        raise SystemExit(f"{out} exists already")
    _private_dir(folder / "clients")
    _new_pair(out, "client")
    _copy(folder / "server.key", out / "server.key")  # the public half only
    _private_dir(folder / "authorized")
    _copy(out / "client.key", folder / "authorized" / f"{name}.key")
    return out


def status(folder: Path | None) -> tuple[int, str]:
    """`auth status`: whether local authentication is on, and anything wrong with its keys."""
    if folder is None:
        return 0, ("local authentication is off: every local process and user can read and publish on the bus. "
                   "Switch it on with `md-health auth init` (docs/security.md).")
    problem = setup_problem(folder)
    if problem:
        return 1, f"local authentication is configured in {folder} but cannot work: {problem}"
    allowed = sorted(p.stem for p in (folder / "authorized").glob("*.key"))
    lines = [f"local authentication is on: CURVE keys in {folder}; allowed clients: {', '.join(allowed) or 'none'}."]
    loose = loose_permissions(folder)
    if loose:
        lines.append(f"warning: other users can reach {len(loose)} path(s) there, e.g. {loose[0]}: "
                     f"run `chmod -R go-rwx {folder}`")
    return (1 if loose else 0), "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m bus.security") -> int:
    """The key commands; `md-health auth ...` is this same function."""
    parser = argparse.ArgumentParser(prog=prog, description="CURVE keys for the health bus: local authentication, "
                                     "and keys for probes or viewers on other machines.")
    parser.add_argument("--dir", type=Path, help=f"key folder (default: ${ENV_DIR}, else curve/ next to the config)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="switch local authentication on: create this machine's keys and allow-list")
    sub.add_parser("status", help="say whether local authentication is on, and check its keys")
    add = sub.add_parser("add-client", help="create and allow a key for a remote probe or viewer")
    add.add_argument("name")
    rm = sub.add_parser("revoke", help="remove a client from the allow-list (restart the aggregator)")
    rm.add_argument("name")
    args = parser.parse_args(argv)
    folder = args.dir or default_dir()
    if args.command == "status":
        code, text = status(args.dir or curve_dir())
        print(text)
        return code
    if args.command == "init":
        init(folder)
        print(f"created {folder}: server and local client keys; local client allowed. Local authentication "
              "is on: restart the aggregator, the probes and Blender to use it.")
    elif args.command == "add-client":
        out = add_client(folder, args.name)
        print(f"created {out}: copy this folder to the remote machine and point {ENV_DIR} at it there.")
    else:
        target = folder / "authorized" / f"{args.name}.key"
        if not target.exists():
            print(f"no allowed key named {args.name!r} in {folder / 'authorized'}", file=sys.stderr)
            return 1
        target.unlink()
        print(f"revoked {args.name}; restart the aggregator to apply.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
