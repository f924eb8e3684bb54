"""`router serve`: the HTTP endpoint (its API keys: router.cli.keys)."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer

from router.cli.common import ConfigOption
from router.errors import RouterError
from router.server.keys import key_store


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: server.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: server.port, 8000).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models, ...)."""
    import logging

    from router.engine.pipeline import Router

    # Worker starts (pid, extra buffers), crashes and restarts belong in the server's log.
    logger = logging.getLogger("router")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    from router.config import load_config
    from router.server.app import create_app
    from router.server.connections import run
    from router.server.origins import is_loopback_name

    loaded = load_config(config)
    host = host or loaded.server.host
    exposed = not is_loopback_name(host)
    with Router(loaded.for_serving(exposed)) as router, key_store(router.config) as keys:
        port = router.config.server.port if port is None else port
        if exposed and not keys.list():
            raise RouterError(
                f"--host {host} exposes the router beyond this machine, which requires API "
                "keys: create one with 'router keys create --user NAME' first"
            )
        if any(m.tier == "cloud" for m in router.config.enabled().values()):
            from router.backends.cloud import warm_litellm

            warm_litellm()  # seconds of import, now rather than on a first cloud request's clock
        app = create_app(router, keys=keys, require_keys=exposed, loopback=not exposed)
        sock = listen(host, port)  # before saying "serving": a port in use is one clear line
        port = sock.getsockname()[1]
        typer.echo(
            f"router serving on http://{host}:{port}/v1 "
            f"({'API keys required' if exposed else 'loopback only'})",
            err=True,
        )
        with sock:
            run(app, router.config.server, sock, log_level="info")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a RouterError that says what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RouterError(
            f"--host {host}: not an address of this machine ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (
            "another program (another router serve?) is using it: stop it or choose --port"
            if exc.errno == errno.EADDRINUSE
            else "choose another --host or --port"
        )
        raise RouterError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    return sock
