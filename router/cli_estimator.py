"""`router score` and `router eval`: the complexity estimator, measured in the open."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli_common import ConfigOption
from router.errors import RequestError


def score(config: ConfigOption = None) -> None:
    """Read JSON lines {"id", "prompt"} (or "messages") on stdin; write {"id", "score"} lines.

    Output keeps input order; a bad line stops with its line number."""
    from router.complexity import default_estimator
    from router.types import ChatRequest

    estimator = default_estimator()
    out = sys.stdout
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            value = estimator.score(ChatRequest(messages))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RequestError) as exc:
            raise RequestError(
                f'stdin line {number}: expected {{"id": ..., "prompt": "..."}} or '
                f'{{"id": ..., "messages": [...]}} ({type(exc).__name__}: {exc})'
            ) from None
        out.write(json.dumps({"id": row.get("id"), "score": value}) + "\n")
    out.flush()


def evaluate(
    data: Annotated[
        Path | None,
        typer.Option(help="The shared data folder (default: ../shared/data if present)."),
    ] = None,
    paired: Annotated[
        list[Path] | None,
        typer.Option(
            help="A paired set: RouteLLM CSV (prompt, weak, strong) or JSONL "
            "{prompt, weak, strong}. Repeatable."
        ),
    ] = None,
    labelled: Annotated[
        list[Path] | None,
        typer.Option(help="A labelled set: JSONL {prompt, label: 0 trivial / 1 hard}."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """APGR, CPT(50%), CPT(80%) and AUROC for the estimator and its baselines (RouteLLM's
    protocol): random (mean of 10 seeds), prompt length, LiteLLM's complexity router, oracle."""
    from router import evaluation as ev
    from router.complexity import default_estimator
    from router.types import ChatRequest

    paired_sets: list[ev.Paired] = [ev.read_paired(p) for p in paired or []]
    labelled_sets: list[ev.Labelled] = [ev.read_labelled(p) for p in labelled or []]
    if not paired_sets and not labelled_sets:
        folder = data or Path("..") / "shared" / "data"
        if not folder.is_dir():
            raise RequestError(
                f"no data: {folder} does not exist; give --data DIR, --paired FILE or "
                "--labelled FILE"
            )
        paired_sets, labelled_sets = ev.shared_sets(folder)
    estimator = default_estimator()

    def ours(prompt: str) -> float:
        return estimator.score(ChatRequest([{"role": "user", "content": prompt}]))

    rows: list[dict[str, Any]] = [
        ev.evaluate("router (this estimator)", [ours], paired_sets, labelled_sets),
        ev.evaluate(
            "random (10 seeds)",
            [ev.random_scorer(s) for s in range(10)],
            paired_sets,
            labelled_sets,
        ),
        ev.evaluate("prompt length", [ev.length_scorer], paired_sets, labelled_sets),
    ]
    peer = ev.litellm_scorer()
    if peer is not None:
        rows.append(ev.evaluate("LiteLLM complexity router", [peer], paired_sets, labelled_sets))
    rows.append(ev.evaluate("oracle", None, paired_sets, labelled_sets))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = [k for k in rows[0] if k != "router"]
    typer.echo("| router | " + " | ".join(columns) + " |")
    typer.echo("|---" * (len(columns) + 1) + "|")
    for r in rows:
        typer.echo(f"| {r['router']} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |")
    sizes = [f"{p.name}: {len(p.prompts)}" for p in paired_sets] + [
        f"{lab.name}: {sum(lab.labels)} hard / {len(lab.labels) - sum(lab.labels)} trivial"
        for lab in labelled_sets
    ]
    typer.echo("prompts: " + "; ".join(sizes))
