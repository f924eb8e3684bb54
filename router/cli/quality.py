"""`router quality`: how often local answers were good enough, from people's feedback."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from router.cli.common import ConfigOption, JsonOption, parse_since
from router.errors import RequestError


def quality(
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d...")] = "30d",
    by: Annotated[str, typer.Option(help="Group by category, model or score.")] = "category",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Local answers rated acceptable (/good, /bad, POST /v1/feedback), with a 95% lower bound,
    overall and per group."""
    from router.config import load_config
    from router.governance.quality import GROUPINGS
    from router.governance.quality import quality as measure
    from router.ledger import SQLiteLedger

    if by not in GROUPINGS:
        raise RequestError(f"--by {by!r}: choose one of {', '.join(GROUPINGS)}")
    start = parse_since(since)
    cfg = load_config(config)
    with SQLiteLedger(cfg.ledger_path()) as ledger:
        report = measure(ledger.entries(start), by)
    if as_json:
        typer.echo(json.dumps({"since": since, **report}, indent=2))
        return
    fb = report["feedback"]
    if not report["rated"]:
        typer.echo(
            f"no local answer rated in the last {since}: rate answers with /good and /bad in "
            "router chat, POST /v1/feedback, or Router.feedback()"
        )
    else:
        typer.echo(
            f"local answers rated acceptable: {report['acceptable_rate']:.1%} "
            f"(≥ {report['lower_bound']:.1%} with 95% confidence), {report['rated']} rated "
            f"in the last {since}"
        )
        typer.echo(f"{by:<24} {'rated':>6} {'acceptable':>11} {'≥ (95%)':>9}")
        for g in report["groups"]:
            typer.echo(
                f"{g['group']:<24} {g['rated']:>6} {g['acceptable_rate']:>11.1%} "
                f"{g['lower_bound']:>9.1%}"
            )
    typer.echo(
        f"feedback: local {fb['local']['good']} good / {fb['local']['bad']} bad, "
        f"cloud {fb['cloud']['good']} good / {fb['cloud']['bad']} bad"
    )
