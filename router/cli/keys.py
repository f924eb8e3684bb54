"""`router keys`: API keys for `router serve`, on this machine's stores or, with --url,
through a running server's admin API."""

from __future__ import annotations

import datetime
import json
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli import admin_client
from router.cli.admin_client import KeyOption, UrlOption
from router.cli.common import ConfigOption, money
from router.config import Config
from router.errors import RequestError, RouterError
from router.ledger import duration
from router.server.key_scope import ROLES, KeyInfo, scoped_models
from router.server.keys import KeyStore, RedisKeyStore, key_store

keys_app = typer.Typer(help="API keys for 'router serve' (required off loopback).")


def _store(config: Path | None) -> KeyStore | RedisKeyStore:
    from router.config import load_config

    return key_store(load_config(config))


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Who the key belongs to.")],
    role: Annotated[
        str,
        typer.Option(
            help="user: sees only its own figures and answers; admin: everyone's, /metrics "
            "and /health's details."
        ),
    ] = "user",
    expires: Annotated[
        str | None,
        typer.Option(help="How long it works: 30m, 12h, 30d, 2w (at most 400d); unset: ever."),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="The modes and models it may ask for, comma-separated (auto,local); "
            "unset: any. Others get 403."
        ),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Its own requests a minute (a 429 past them).")
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(help="Its own tokens a minute, counted as answers end (a 429 past them)."),
    ] = None,
    daily_usd: Annotated[
        float | None,
        typer.Option(
            "--daily-usd",
            help="Its own cloud dollars a UTC day, on top of its user's budgets (a 429 past "
            "them; 0: no paid call).",
        ),
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key for USER and print it once (only its hash is stored)."""
    if role not in ROLES:
        raise RequestError(f"--role {role!r}: choose {' or '.join(ROLES)}")
    if url is not None:
        body: dict[str, Any] = {
            "user": user, "role": role, "expires": expires, "rpm": rpm, "tpm": tpm,
            "daily_usd": daily_usd,
        }  # fmt: skip
        if models is not None:
            body["models"] = [m.strip() for m in models.split(",") if m.strip()]
        made = admin_client.call(url, key, "POST", "/keys", body)
        typer.echo(made["key"])
        typer.echo(f"created {made['id']} ({role}) for {user} at {url}; it will not be shown "
                   "again", err=True)  # fmt: skip
        return
    loaded = _config(config)
    scope = _models(models, loaded)
    until = time.time() + duration(expires, "--expires") if expires is not None else None
    with key_store(loaded) as store:
        try:
            new, key_id = store.create(
                user, role, expires=until, models=scope, rpm=rpm, tpm=tpm, daily_usd=daily_usd
            )
        except ValueError as exc:
            raise RequestError(str(exc)) from None
    typer.echo(new)
    typer.echo(f"created {key_id} ({role}) for {user}; it will not be shown again", err=True)


def _config(config: Path | None) -> Config:
    from router.config import load_config

    return load_config(config)


def _models(models: str | None, config: Config) -> tuple[str, ...]:
    """--models as names, each a mode or a model of the file (RequestError otherwise)."""
    if models is None:
        return ()
    names = [m.strip() for m in models.split(",") if m.strip()]
    return scoped_models(names or [models], config, "--models")


def _when(at: float | None, never: str = "-") -> str:
    if at is None:
        return never
    return datetime.datetime.fromtimestamp(at).isoformat(timespec="seconds")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List keys: id, user, role, created, expiry, scope and last use (never the keys)."""
    if url is not None:
        rows = [KeyInfo.of(r) for r in admin_client.call(url, key, "GET", "/keys")["keys"]]
    else:
        with _store(config) as store:
            rows = store.list()
    if as_json:
        typer.echo(json.dumps([r.record() | {"expired": r.owner().expired()} for r in rows]))
        return
    if not rows:
        typer.echo("no keys yet: create one with 'router keys create --user NAME'", err=True)
        return
    typer.echo("ID\tUSER\tROLE\tCREATED\tEXPIRES\tMODELS\tRPM\tTPM\tDAILY USD\tLAST USED")
    for r in rows:
        expires = _when(r.expires, "never") + (" (expired)" * r.owner().expired())
        typer.echo(
            f"{r.key_id}\t{r.user}\t{r.role}\t{_when(r.created)}\t{expires}\t"
            f"{','.join(r.models) or 'any'}\t{r.rpm or '-'}\t{r.tpm or '-'}\t"
            f"{'-' if r.daily_usd is None else money(r.daily_usd)}\t{_when(r.last_used, 'never')}"
        )


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id shown by 'router keys list'.")],
    grace: Annotated[
        str, typer.Option(help="How long the old key keeps working: 30m, 1h, 7d; 0m: not at all.")
    ] = "1h",
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Print a new key with the old one's owner and scope; the old one works --grace more."""
    seconds = duration(grace, "--grace")
    if url is not None:
        path = f"/keys/{urllib.parse.quote(key_id, safe='')}/rotate"
        answer = admin_client.call(url, key, "POST", path, {"grace": grace})
        made: tuple[str, str] | None = (answer["key"], answer["id"])
    else:
        with _store(config) as store:
            made = store.rotate(key_id, seconds)
    if made is None:
        raise RouterError(f"no key with id {key_id!r} (see 'router keys list')")
    typer.echo(made[0])
    typer.echo(
        f"created {made[1]} in place of {key_id}, which works until "
        f"{_when(time.time() + seconds)}; the new key will not be shown again",
        err=True,
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by 'router keys list'.")],
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    if url is not None:
        admin_client.call(url, key, "DELETE", f"/keys/{urllib.parse.quote(key_id, safe='')}")
        found = True
    else:
        with _store(config) as store:
            found = store.revoke(key_id)
    if not found:
        raise RouterError(f"no key with id {key_id!r} (see 'router keys list')")
    typer.echo(f"revoked {key_id}", err=True)
