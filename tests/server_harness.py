"""A real uvicorn server on 127.0.0.1 in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from router.config.sections import ServerSettings
from router.server.connections import server_config


class ServerThread:
    """`app` served as `router serve` serves it (router.server.connections), on a free port.
    `settings`: the [server] section (default: the app's router's, else the defaults); `port`:
    this one (the [server] port of its models.toml), not a free one."""

    def __init__(self, app: Any, settings: ServerSettings | None = None, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        config = server_config(
            app,
            settings or getattr(getattr(app, "state", None), "server_settings", ServerSettings()),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


def health(base_url: str, key: str = "owner") -> dict[str, Any]:
    """GET /health with its details: on loopback any key shows them (a placeholder here),
    off loopback an admin key; without one it says only ok or degraded."""
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}/health", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def raw_post(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a JSON POST and return its socket unread: closing it is the client hanging up."""
    import json

    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def at_once(url: str, prompts: list[str], user: str) -> list[httpx.Response]:
    """One chat request a prompt, for `user`, all sent at the same moment (max_tokens 40,
    no cache): the answers, in the order they came."""
    results: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(len(prompts))

    def send(text: str) -> None:
        start.wait(timeout=30)
        r = httpx.post(
            url + "/v1/chat/completions",
            timeout=60,
            headers={"Cache-Control": "no-cache"},
            json={
                "model": "cloud",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 40,
                "user": user,
            },
        )
        with lock:
            results.append(r)

    threads = [threading.Thread(target=send, args=(text,)) for text in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results
