"""`router budget` and `router audit`: the governance commands."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer

from router.cli import admin_client
from router.cli.admin_client import KeyOption, UrlOption
from router.cli.common import ConfigOption, JsonOption, money, parse_since
from router.errors import RequestError


class OnExceed(str, enum.Enum):
    block = "block"
    local_only = "local-only"


budget_app = typer.Typer(help="Token and dollar budgets per user or team.")


@budget_app.command("set")
def budget_set(
    user: Annotated[str | None, typer.Argument(help="The user (or give --team).")] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team from models.toml.")] = None,
    daily_tokens: Annotated[int | None, typer.Option(min=0)] = None,
    monthly_tokens: Annotated[int | None, typer.Option(min=0)] = None,
    daily_usd: Annotated[float | None, typer.Option(min=0)] = None,
    monthly_usd: Annotated[float | None, typer.Option(min=0)] = None,
    session_max_tokens: Annotated[
        int | None, typer.Option(min=0, help="The most tokens one session may use.")
    ] = None,
    session_max_usd: Annotated[
        float | None, typer.Option(min=0, help="The most dollars one session may spend.")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Reserve each call's max_tokens (never overrun) instead of its expected use."
        ),
    ] = False,
    on_exceed: Annotated[
        OnExceed,
        typer.Option(help="block (refused: HTTP 400/402) or local-only (answer locally)."),
    ] = OnExceed.block,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Set (replace) the budget of USER or --team NAME; it overrides models.toml's."""
    from router.config import load_config
    from router.engine.stores import budget_store
    from router.governance.budgets import parse_budget

    fields = {
        "user": user,
        "team": team,
        "daily_tokens": daily_tokens,
        "monthly_tokens": monthly_tokens,
        "daily_usd": daily_usd,
        "monthly_usd": monthly_usd,
        "session_tokens": session_max_tokens,
        "session_usd": session_max_usd,
        "strict": strict,
        "on_exceed": on_exceed.value,
    }
    if url is not None:
        sent = {k: v for k, v in fields.items() if v is not None}
        shown = admin_client.call(url, key, "PUT", "/budgets", sent)
        typer.echo(f"budget for {shown['scope']} set at {url}", err=True)
        return
    cfg = load_config(config)
    budget = parse_budget(fields, cfg)
    with budget_store(cfg) as store:
        store.set(budget)
    typer.echo(f"budget for {budget.scope} set", err=True)


@budget_app.command("rm")
def budget_rm(
    user: Annotated[str | None, typer.Argument(help="The user (or give --team).")] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team from models.toml.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove the budget 'router budget set' gave USER or --team NAME."""
    from router.config import load_config
    from router.engine.stores import budget_store

    if (user is None) == (team is None):
        raise RequestError("name a USER or give --team NAME (one of them)")
    scope = f"user:{user}" if user is not None else f"team:{team}"
    if url is not None:
        admin_client.call(url, key, "DELETE", "/budgets" + admin_client.query(user=user, team=team))
        typer.echo(f"budget for {scope} removed at {url}", err=True)
        return
    cfg = load_config(config)
    in_file = any(b.scope == scope for b in cfg.budgets)
    with budget_store(cfg) as store:
        removed = store.remove(scope)
    if not removed and in_file:
        raise RequestError(f"the budget of {scope} is in {cfg.source}: remove it there")
    if not removed:
        raise RequestError(f"no budget for {scope} (see 'router budget show')")
    typer.echo(
        f"budget for {scope} removed"
        + (f"; the one in {cfg.source} applies again" if in_file else ""),
        err=True,
    )


@budget_app.command("show")
def budget_show(
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Every budget with what has been used this day and month."""
    from router.config import load_config
    from router.engine.stores import budget_store
    from router.governance.budgets import budget_rows

    if url is not None:
        rows = admin_client.call(url, key, "GET", "/budgets")["budgets"]
    else:
        with budget_store(load_config(config)) as store:
            rows = budget_rows(store)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no budgets: add [[budgets]] to models.toml or use 'router budget set'")
    for r in rows:
        parts = [
            f"{k} {money(v) if k.endswith('usd') else f'{v:,}'} each"  # one session's cap
            if k not in r["used"]
            else f"{k} {money(r['used'][k])}/{money(v)}"
            if k.endswith("usd")
            else f"{k} {r['used'][k]:,}/{v:,}"
            for k, v in r["limits"].items()
        ]
        typer.echo(f"{r['scope']:<24} {r['on_exceed']:<10} " + "  ".join(parts))


def audit(
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d...")] = "30d",
    by: Annotated[str, typer.Option(help="user or team.")] = "user",
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, json or csv.")] = "table",
    fail_on_flags: Annotated[
        bool, typer.Option("--fail-on-flags", help="Exit 4 when any account is flagged.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Per user or team: usage, cost, savings, category mix, low-value share and flags."""
    from router.config import load_config
    from router.engine.stores import open_ledger
    from router.governance import audit as audit_mod

    if by not in ("user", "team"):
        raise RequestError(f"--by {by!r}: choose user or team")
    if fmt not in ("table", "markdown", "json", "csv"):
        raise RequestError(f"--format {fmt!r}: choose table, markdown, json or csv")
    start = parse_since(since)
    cfg = load_config(config)
    with open_ledger(cfg) as ledger:
        accounts = audit_mod.audit(ledger, cfg, by, since=start)
    if fmt != "table":
        typer.echo(audit_mod.render(accounts, fmt))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"router audit by {by}, last {since}")
        for col in audit_mod.COLUMNS:
            table.add_column(col.replace("_", " "))
        for a in accounts:
            table.add_row(*audit_mod._row(a), style="red" if a.flags else None)
        Console(width=max(120, Console().width)).print(table)
    flagged = [a for a in accounts if a.flags]
    if fail_on_flags and flagged:
        typer.echo(f"{len(flagged)} account(s) flagged", err=True)
        raise typer.Exit(4)
