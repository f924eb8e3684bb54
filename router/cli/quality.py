"""`router quality`: how often local answers were good enough (the judge's verdicts and
people's ratings), and what moving a local ceiling would do."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from router.cli.common import ConfigOption, JsonOption, parse_since
from router.errors import RequestError
from router.units import money


def quality(
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d...")] = "30d",
    by: Annotated[str, typer.Option(help="Group by category, model or score.")] = "category",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Local answers acceptable (shadow judging's verdicts, /good and /bad ratings), with a
    95% lower bound, per group; the judge's spend; what each local ceiling would keep local
    and how acceptable those answers were."""
    from router.config import load_config
    from router.engine.stores import open_ledger
    from router.governance.quality import GROUPINGS, report

    if by not in GROUPINGS:
        raise RequestError(f"--by {by!r}: choose one of {', '.join(GROUPINGS)}")
    start = parse_since(since)
    cfg = load_config(config)
    with open_ledger(cfg) as ledger:
        figures = report(ledger, cfg, by, since=start)
    if as_json:
        typer.echo(json.dumps({"since": since, **figures}, indent=2))
        return
    _show(figures, since, by)


def _show(report: dict[str, Any], since: str, by: str) -> None:
    fb = report["feedback"]
    if not report["assessed"]:
        typer.echo(
            f"no local answer judged or rated in the last {since}: turn on shadow judging "
            "([quality] shadow_rate and judge in models.toml), or rate answers with /good and "
            "/bad in router chat, POST /v1/feedback, or Router.feedback()"
        )
    else:
        typer.echo(
            f"local answers acceptable: {report['acceptable_rate']:.1%} "
            f"(≥ {report['lower_bound']:.1%} with 95% confidence), {report['assessed']} "
            f"assessed ({report['judged']} judged, {report['rated']} rated) in the last {since}"
        )
        typer.echo(
            f"{by:<24} {'assessed':>8} {'judged':>7} {'rated':>6} {'acceptable':>11} {'≥ (95%)':>9}"
        )
        for g in report["groups"]:
            typer.echo(
                f"{g['group']:<24} {g['assessed']:>8} {g['judged']:>7} {g['rated']:>6} "
                f"{g['acceptable_rate']:>11.1%} {g['lower_bound']:>9.1%}"
            )
    if report["cloud_answered_judged"]:
        typer.echo(
            f"answered by the cloud, local judged good enough: {report['local_would_have_done']} "
            f"of {report['cloud_answered_judged']}"
        )
    judged_any = any(c["judged"] for c in report["ceilings"])
    if judged_any:
        marks = {round(v, 1): n for n, v in report["local_ceilings"].items()}
        typer.echo("what each ceiling would do (requests scoring at most it go local):")
        typer.echo(
            f"{'ceiling':>8} {'local share':>12} {'judged':>7} {'acceptable':>11} {'≥ (95%)':>9}"
        )
        for c in report["ceilings"]:
            rate = "-" if c["acceptable_rate"] is None else f"{c['acceptable_rate']:.1%}"
            low = "-" if c["lower_bound"] is None else f"{c['lower_bound']:.1%}"
            mark = f"  ~ {marks[c['ceiling']]} now" if c["ceiling"] in marks else ""
            typer.echo(
                f"{c['ceiling']:>8.1f} {c['local_share']:>12.1%} {c['judged']:>7} {rate:>11} "
                f"{low:>9}{mark}"
            )
    typer.echo(
        f"judge spend: {money(report['judge_usd'])} (the router's own, on no budget); "
        f"failed judgings: {report['judge_failures']}"
    )
    typer.echo(
        f"feedback: local {fb['local']['good']} good / {fb['local']['bad']} bad, "
        f"cloud {fb['cloud']['good']} good / {fb['cloud']['bad']} bad"
    )
