"""`router limits`: rate limits set at run time (they replace models.toml's [[limits]] rule of
the same scope and model), on this machine's stores or, with --url, a running server's."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from router.cli import admin_client
from router.cli.admin_client import KeyOption, UrlOption
from router.cli.common import ConfigOption, JsonOption
from router.errors import RequestError

limits_app = typer.Typer(help="Rate limits (rpm, tpm) per user, team or each user.")

UserArg = Annotated[str | None, typer.Argument(help="The user (or --team, or --each-user).")]
TeamOption = Annotated[str | None, typer.Option("--team", help="A team from models.toml.")]
EachOption = Annotated[
    bool, typer.Option("--each-user", help="Every user, each with a window of their own.")
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Only requests asking for this mode or model.")
]


def _scope(user: str | None, team: str | None, each: bool) -> dict[str, Any]:
    if sum((user is not None, team is not None, each)) != 1:
        raise RequestError("name a USER, or give --team NAME or --each-user (one of them)")
    return {"user": user} if user is not None else {"team": team} if team is not None else {}


@limits_app.command("set")
def limits_set(
    user: UserArg = None,
    team: TeamOption = None,
    each_user: EachOption = False,
    model: ModelOption = None,
    rpm: Annotated[int | None, typer.Option(help="Requests a minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens a minute.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Set (replace) the rate limit of USER, --team NAME or --each-user, for --model or all."""
    from router.config import load_config
    from router.engine.stores import rate_rules
    from router.governance.limits import parse_limit

    fields = {**_scope(user, team, each_user), "model": model, "rpm": rpm, "tpm": tpm}
    if url is not None:
        sent = {k: v for k, v in fields.items() if v is not None}
        shown = admin_client.call(url, key, "PUT", "/limits", sent)
        typer.echo(f"rate limit for {shown['key']} set at {url}", err=True)
        return
    cfg = load_config(config)
    rule = parse_limit(fields, cfg)
    with rate_rules(cfg) as rules:
        rules.set(rule)
    typer.echo(f"rate limit for {rule.scope} ({rule.model or 'every model'}) set", err=True)


@limits_app.command("rm")
def limits_rm(
    user: UserArg = None,
    team: TeamOption = None,
    each_user: EachOption = False,
    model: ModelOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove the rate limit 'router limits set' gave USER, --team NAME or --each-user."""
    from router.config import RateLimit, load_config
    from router.engine.stores import rate_rules
    from router.governance.limits import rule_key

    _scope(user, team, each_user)
    if url is not None:
        each = "true" if each_user else None
        query = admin_client.query(user=user, team=team, each_user=each, model=model)
        admin_client.call(url, key, "DELETE", "/limits" + query)
        typer.echo(f"rate limit removed at {url}", err=True)
        return
    cfg = load_config(config)
    wanted = rule_key(RateLimit.model_construct(user=user, team=team, model=model))
    with rate_rules(cfg) as rules:
        removed = rules.remove(wanted)
    if not removed:
        in_file = any(rule_key(r) == wanted for r in cfg.limits)
        where = f"it is in {cfg.source}: remove it there" if in_file else "see 'router limits show'"
        raise RequestError(f"no rate limit set for {wanted} ({where})")
    typer.echo(f"rate limit for {wanted} removed", err=True)


@limits_app.command("show")
def limits_show(
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Every rate limit in force: models.toml's and those set at run time."""
    from router.config import load_config
    from router.engine.stores import rate_rules

    if url is not None:
        rows = admin_client.call(url, key, "GET", "/limits")["limits"]
    else:
        with rate_rules(load_config(config)) as rules:
            rows = rules.rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no rate limits: add [[limits]] to models.toml or use 'router limits set'")
    for r in rows:
        figures = "  ".join(f"{k} {r[k]:,}" for k in ("rpm", "tpm") if k in r)
        typer.echo(f"{r['key']:<36} {figures:<28} ({r['source']})")
