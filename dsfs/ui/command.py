"""``dsfs ui``: serve the read-only web UI over the configured store with uvicorn.

Registering the command imports nothing of the web stack; running it needs the ``ui`` extra.
The server listens on 127.0.0.1 unless told otherwise, and says loudly when it is not: there is
no authentication, so anyone who reaches the address reads every dataset in the store.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import threading

from ..errors import Busy, InvalidInput

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_LOOPBACK_NAMES = ("localhost",)


def add_command(command) -> None:
    """Register ``ui`` with the CLI's ``command(name, func, help)`` helper."""
    sp = command("ui", cmd_ui, "serve a read-only web UI of the store's datasets and versions")
    sp.add_argument("--host", default=DEFAULT_HOST,
                    help=f"address to listen on (default {DEFAULT_HOST}; there is no authentication)")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    sp.add_argument("--open", action="store_true", help="open the UI in a web browser")


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_ui(repo, args):
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise InvalidInput(f"dsfs ui needs the ui extra: pip install 'dsfs[ui]' (missing: {exc.name})") from None
    from .model import UiModel

    loopback = is_loopback(args.host)
    sock = _listen(args.host, args.port)
    if not loopback:
        print(f"dsfs: WARNING: dsfs ui is listening on {args.host}, not on this machine only, and has "
              "NO AUTHENTICATION: anyone who can reach it can read every dataset in "
              f"{repo.settings.store}", file=sys.stderr, flush=True)
    # On loopback, only requests naming this machine are served (no DNS rebinding).
    allowed = [args.host, "localhost", "127.0.0.1", "[::1]"] if loopback else None
    model = UiModel(repo)
    config = uvicorn.Config(create_app(model, allowed_hosts=allowed),
                            log_level="info" if args.verbose else "warning",
                            access_log=bool(args.verbose), lifespan="off")
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}/"
    # The socket already listens: a browser opened now waits in its backlog, not in vain. It is
    # opened beside the server, since $BROWSER (a terminal browser) may run until it is closed.
    print(f"dsfs ui: serving {repo.settings.store} at {url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), name="dsfs-ui-browser", daemon=True).start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # the way a server is stopped, not a failure
    finally:
        model.close()
        sock.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or the reason there is none."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"port must be 0..65535: {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot listen on {host!r}: {exc.strerror.lower()}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Busy(f"address already in use: {host}:{port}") from None
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror.lower()}") from None
    return sock
