"""`router keys ... --url` and `router budget ... --url`: the same commands against a running
`router serve`, through its admin API (router.server.admin_api), with an admin key."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from router.errors import RequestError, UnavailableError

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A running 'router serve' to manage through its admin API (http://HOST:PORT), "
        "instead of this machine's stores.",
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="ROUTER_API_KEY",
        help="An admin key for --url ($ROUTER_API_KEY); a server on loopback needs none.",
    ),
]
TIMEOUT = 30


def call(url: str, key: str | None, method: str, path: str, body: Any = None) -> Any:
    """`method` on the admin API at `url` + /v1/router/admin + `path`; the JSON answer, or the
    server's error as a RequestError (4xx) or UnavailableError (no answer, 5xx)."""
    body = fetch(url, key, method, path, body)[1]
    try:
        return json.loads(body)
    except ValueError:
        raise UnavailableError(
            f"{url[:80]} answered {body[:60]!r}, not JSON: is it a router server?"
        ) from None


def fetch(
    url: str, key: str | None, method: str, path: str, body: Any = None
) -> tuple[Mapping[str, str], bytes]:
    """`call`'s answer as it came: its headers and its body."""
    base = url.rstrip("/").removesuffix("/v1")
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise RequestError(f"--url {url[:80]!r}: give the server's http://HOST:PORT")
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key or 'local'}"}
    asked = urllib.request.Request(
        f"{base}/v1/router/admin{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(asked, timeout=TIMEOUT) as response:
            return dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        message = _message(exc)
        if exc.code >= 500:
            raise UnavailableError(f"the router at {base} answered {exc.code}: {message}") from None
        raise RequestError(f"the router at {base} refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise UnavailableError(
            f"no router server answers at {base} ({why}): start one with 'router serve', or "
            "give the right --url"
        ) from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.load(exc).get("error")
    except (ValueError, AttributeError, OSError):
        return f"HTTP {exc.code}"
    if isinstance(error, dict):
        return str(error.get("message") or f"HTTP {exc.code}")
    return str(error or f"HTTP {exc.code}")


def query(**params: str | list[str] | None) -> str:
    """A query string of the `params` given (a list: the parameter once per value)."""
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given, doseq=True)
