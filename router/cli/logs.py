"""`router stats` and `router logs`: what the ledger recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from router.cli.common import ConfigOption, JsonOption, money, parse_since
from router.errors import RequestError
from router.ledger import GROUPS, Entry

MAX_LOGS = 10_000  # rows read into memory at once; `sqlite3` on the file reads the rest


def stats(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d, 2w.")] = "7d",
    by: Annotated[str | None, typer.Option(help=f"Group rows by {', '.join(GROUPS)}.")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, cost and savings from the ledger."""
    from router.config import load_config
    from router.dashboard import stats_report
    from router.engine.stores import open_ledger
    from router.governance.quality import describe

    if by is not None and by not in GROUPS:
        raise RequestError(f"--by {by!r}: choose one of {', '.join(GROUPS)}")
    start = parse_since(since)
    cfg = load_config(config)
    with open_ledger(cfg) as ledger:
        report = stats_report(ledger, since, start, by or "tier")
    totals, groups, quality = report, report["groups"], report["quality"]
    rate = report["cache_hit_rate"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"router stats, last {since} ({cfg.ledger_where()})")
    columns = (
        by or "tier",
        "requests",
        "tokens",
        "cost",
        "baseline",
        "tokens saved",
        "saved",
        "cache hits",
    )
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for g in [*groups, {**totals, "group": "total"}]:
        table.add_row(
            str(g["group"]),
            str(g["requests"]),
            str(g["tokens"]),
            money(g["cost_usd"]),
            money(g["baseline_usd"]),
            str(g["tokens_saved"]),
            money(g["usd_saved"]),
            str(g["cache_hits"]),
        )
    Console(width=max(100, Console().width)).print(table)
    typer.echo(f"cache hit rate {rate:.1%}")
    # What the savings are made of: only "routed" is the estimator's doing.
    parts = [
        f"{why} {money(s['usd_saved'])} ({s['tokens_saved']} tokens, {s['requests']} requests)"
        for why, s in totals["saved_by"].items()
        if s["requests"]
    ]
    if parts:
        typer.echo("saved by: " + "; ".join(parts))
    if totals["cache_read_tokens"] or totals["cache_write_tokens"]:
        typer.echo(
            f"provider prompt cache: {totals['cache_read_tokens']:,} tokens read, "
            f"{totals['cache_write_tokens']:,} written (priced at their own rates)"
        )
    if totals["prompt_cached_tokens"]:
        typer.echo(
            f"local KV cache: {totals['prompt_cached_tokens']:,} prompt tokens reused, "
            "not read again"
        )
    if totals["refusals"]:
        typer.echo(f"refused: {totals['refusals']} requests (router logs shows why)")
    if quality["assessed"]:  # what the savings cost in quality, where anyone looked
        typer.echo("quality: " + describe(quality))


def logs(
    count: Annotated[
        int,
        typer.Option(
            "--count", "-n", min=1, max=MAX_LOGS, help=f"How many (at most {MAX_LOGS:,})."
        ),
    ] = 10,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session's (an agent run).")
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """The latest requests from the ledger, newest last: route, tokens, cost, savings, and the
    prompt when models.toml has store_prompts = true."""
    import datetime

    from router.config import load_config
    from router.engine.stores import open_ledger

    cfg = load_config(config)
    with open_ledger(cfg) as ledger:
        rows = ledger.recent(count, user, session)
    if as_json:
        out = []
        for e in rows:
            row = dataclasses.asdict(e)
            row["messages"] = json.loads(e.prompt) if e.prompt else None
            row.pop("prompt", None)
            out.append(row)
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no requests recorded yet in {cfg.ledger_where()}", err=True)
        return
    for e in rows:
        when = datetime.datetime.fromtimestamp(e.ts).strftime("%Y-%m-%d %H:%M:%S")
        head = (
            f"{when}  {e.user or '-'}  {e.tier} · {e.model}"
            + (f" via {e.api}" if e.api != "chat" else "")
            + (f"  session {e.session[:12]}" if e.session else "")
            + (f"  REFUSED ({e.refusal})" if e.refusal else "")
            + f"  score {e.score:.2f}  "
            f"{e.prompt_tokens}+{e.completion_tokens} tokens"
            + (f" ({e.cache_read_tokens} cached)" if e.cache_read_tokens else "")
            + (f" ({e.prompt_cached_tokens} reused)" if e.prompt_cached_tokens else "")
            + f"  {money(e.cost_usd)}  "
            f"saved {money(e.usd_saved)}  {e.latency_ms:.0f} ms"
            + ("  cache hit" if e.cache_hit else "")
            + (f"  [{e.flags}]" if e.flags else "")
            + (
                f"  rated {e.rating}" + (f": {e.feedback}" if e.feedback else "")
                if e.rating
                else ""
            )
            + _verdict(e)
        )
        typer.echo(head)
        asked = _last_user_text(e.prompt)
        if asked is not None:
            typer.echo(f"    > {asked}")
    if not cfg.router.store_prompts:
        typer.echo(
            "(prompts are not stored: set store_prompts = true under [router] to keep them)",
            err=True,
        )


def _last_user_text(prompt: str | None, width: int = 200) -> str | None:
    if not prompt:
        return None
    try:
        messages = json.loads(prompt)
    except ValueError:
        return None
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            from router.types import message_text

            text = " ".join(message_text(m).split())
            return text if len(text) <= width else text[: width - 1] + "…"
    return None


def report(
    html: Annotated[Path, typer.Option("--html", help="Write the dashboard page to this file.")],
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d...")] = "7d",
    config: ConfigOption = None,
) -> None:
    """Write the savings dashboard, figures included, as one self-contained HTML file (to mail
    or attach to a ticket): the page of `router serve`'s /dashboard, needing nothing else."""
    import os
    import tempfile

    from router import dashboard
    from router.config import load_config
    from router.engine.stores import budget_store, open_ledger

    cfg = load_config(config)
    with (
        open_ledger(cfg) as ledger,
        budget_store(cfg) as budgets,
    ):
        figures = dashboard.summary(cfg, ledger, budgets, since)
    target = html.expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dashboard.page(figures))
        os.chmod(tmp, 0o644)  # a report to share, not a secret
        os.replace(tmp, target)
    except OSError as exc:
        raise RequestError(f"--html {html}: cannot write it ({exc.strerror})") from None
    head = figures["headline"]
    typer.echo(
        f"wrote {target}: {head['requests']:,} requests in the last {since}, "
        f"saved {money(head['usd_saved'])}",
        err=True,
    )


def _verdict(e: Entry) -> str:
    """Shadow judging's verdict on the local answer, as `router logs` shows it."""
    if not e.verdict:
        return ""
    if e.tier == "local":
        return f"  judged {e.verdict} against {e.shadow_model} by {e.judge}"
    return f"  {e.shadow_model}'s answer judged {e.verdict} by {e.judge}"
