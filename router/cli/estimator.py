"""`router score` and `router eval`: the complexity estimator, measured in the open."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from router.cli.common import ConfigOption, parse_since
from router.errors import RequestError

if TYPE_CHECKING:
    from router.complexity import Estimator
    from router.config import Config
    from router.types import ChatRequest


def _requests(lines: Iterable[str], where: str) -> Iterator[tuple[Any, ChatRequest]]:
    """(id, request) per JSON line {"id", "prompt"} or {"id", "messages"}; blank lines skipped,
    a bad line stops with its line number."""
    from router.types import ChatRequest

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            request = ChatRequest(messages)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RequestError) as exc:
            raise RequestError(
                f'{where} line {number}: expected {{"id": ..., "prompt": "..."}} or '
                f'{{"id": ..., "messages": [...]}} ({type(exc).__name__}: {exc})'
            ) from None
        yield row.get("id"), request


EstimatorOption = Annotated[
    Path | None,
    typer.Option(
        help="Score with this estimator file (`router learn` writes one); default: "
        "[router] estimator in models.toml, else the shipped estimator."
    ),
]


def configured_estimator(config: Path | None, path: Path | None = None) -> Estimator:
    """--estimator PATH, else the one models.toml names, else the shipped one."""
    from router.complexity import load_estimator
    from router.config import load_config

    return load_estimator(path if path is not None else load_config(config).estimator_path())


def score(estimator: EstimatorOption = None, config: ConfigOption = None) -> None:
    """Read JSON lines {"id", "prompt"} (or "messages") on stdin; write {"id", "score"} lines.

    Output keeps input order; a bad line stops with its line number."""
    from router.complexity.followups import conversation_score

    scorer = configured_estimator(config, estimator)
    out = sys.stdout
    for ident, request in _requests(sys.stdin, "stdin"):
        value = conversation_score(scorer, request)  # as the router scores it
        out.write(json.dumps({"id": ident, "score": value}) + "\n")
    out.flush()


def calibrate(
    local_share: Annotated[
        float | None,
        typer.Option(help="Share of requests the local model should answer, 0-1 (e.g. 0.7)."),
    ] = None,
    max_cloud_usd_per_day: Annotated[
        float | None,
        typer.Option(help="Daily cloud budget: send the hardest requests it pays for (ledger)."),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Calibrate on a prompt file (router score's JSON lines), not the ledger."
        ),
    ] = None,
    since: Annotated[str, typer.Option(help="Ledger window: 30m, 24h, 7d, 2w.")] = "30d",
    model: Annotated[
        str | None,
        typer.Option(
            help="Local model to set (default: the enabled local model with the highest ceiling)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
) -> None:
    """Set a local model's ceiling (max_score) from real traffic and write it to models.toml."""
    from router.complexity import calibration as cal
    from router.complexity import estimator_name, load_estimator
    from router.config import load_config, shipped_default_path
    from router.engine.stores import open_ledger

    if (local_share is None) == (max_cloud_usd_per_day is None):
        raise RequestError("give one target: --local-share 0.7 or --max-cloud-usd-per-day 5")
    if prompts is not None and max_cloud_usd_per_day is not None:
        raise RequestError(
            "--max-cloud-usd-per-day needs the ledger's prices and days; use --local-share "
            "with --prompts"
        )
    cfg = load_config(config)
    name = model or _widest_local(cfg)
    entry = cfg.models.get(name)
    if entry is None or entry.tier != "local":
        local = ", ".join(n for n, m in cfg.models.items() if m.tier == "local") or "none"
        raise RequestError(f"--model {name!r}: not a local model in the config (local: {local})")

    estimator = load_estimator(cfg.estimator_path())
    current = estimator_name(estimator)
    skipped = 0
    if prompts is not None:
        try:
            lines = prompts.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise RequestError(f"--prompts {prompts}: cannot read: {exc.strerror}") from None
        from router.complexity.followups import conversation_score

        requests = _requests(lines, str(prompts))
        scores = [conversation_score(estimator, r) for _, r in requests]
        costs: list[float] = []
        stamps: list[float] = []
        sample = f"{len(scores)} prompts in {prompts}"
    else:
        with open_ledger(cfg) as ledger:
            rows = ledger.entries(parse_since(since))
        used = [e for e in rows if e.estimator == current]
        skipped = len(rows) - len(used)
        scores = [e.score for e in used]
        costs = [e.baseline_usd for e in used]
        stamps = [e.ts for e in used]
        sample = f"{len(scores)} requests in the ledger (last {since})"
        if skipped and len(scores) < cal.MIN_REQUESTS:
            raise RequestError(
                f"only {len(scores)} requests in the ledger (last {since}) were scored by "
                f"{current}; {skipped} scored by an older estimator are left out (their scores "
                "mean something else): pass a prompt file with --prompts, or wait for traffic"
            )
        if skipped:
            sample += f"; {skipped} scored by an older estimator left out"
    if local_share is not None:
        result = cal.for_local_share(scores, local_share)
        target = f"--local-share {local_share}"
    else:
        assert max_cloud_usd_per_day is not None
        days = cal.days_covered(stamps)
        result = cal.for_cloud_budget(scores, costs, days, max_cloud_usd_per_day)
        target = f"--max-cloud-usd-per-day {max_cloud_usd_per_day}"

    source = cfg.source or shipped_default_path()
    shipped = source.resolve() == shipped_default_path().resolve()
    path = Path.cwd() / "models.toml" if shipped else source
    note = f"router calibrate {target}, {time.strftime('%Y-%m-%d')}, {len(scores)} requests"
    text = cal.set_max_score(source.read_text(encoding="utf-8"), name, result.ceiling, note, path)
    if not dry_run:
        cal.write_atomically(path, text)
    report = {
        "model": name,
        "old_ceiling": entry.max_score,
        "ceiling": result.ceiling,
        "local_share": result.local_share,
        "cloud_usd_per_day": result.cloud_usd_per_day,
        "requests": len(scores),
        "skipped": skipped,
        "estimator": current,
        "config": str(path),
        "written": not dry_run,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    spend = (
        f", cloud about ${result.cloud_usd_per_day:.2f}/day"
        if result.cloud_usd_per_day is not None
        else ""
    )
    typer.echo(
        f"{name} ceiling {entry.max_score:.4g} -> {result.ceiling:.4g}: "
        f"{result.local_share:.1%} of {sample} stay local{spend}"
    )
    if dry_run:
        typer.echo("dry run: nothing written")
    elif shipped:
        typer.echo(f"wrote {path} (a copy of the shipped default, found first from here)")
    else:
        typer.echo(f"wrote {path}")


def _widest_local(cfg: Config) -> str:
    local = [
        (m.max_score, n)
        for n, m in cfg.enabled().items()
        if m.tier == "local" and not m.embeddings  # chat models: embedding ones have no ceiling
    ]
    if not local:
        raise RequestError("no enabled local model in the config: name one with --model")
    return max(local)[1]


def _data_folder(given: Path | None) -> Path:
    """--data, else $ROUTER_DATA, else ../shared/data beside the current directory or beside
    the checkout the router runs from; a RequestError that says where to get data otherwise."""
    import os

    if given is not None:
        candidates = [given]
    elif os.environ.get("ROUTER_DATA"):
        candidates = [Path(os.environ["ROUTER_DATA"])]
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates = [Path.cwd().parent / "shared" / "data", checkout.parent / "shared" / "data"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise RequestError(
        f"no evaluation data in {tried}: the sets are public (RouteLLM's MMLU and GSM8K "
        "judgements, CLINC150, Arena-Hard; docs/data.md says where to get each); put them in "
        "a folder and give --data DIR (or set ROUTER_DATA), or bring your own with "
        "--paired FILE / --labelled FILE"
    )


def evaluate(
    data: Annotated[
        Path | None,
        typer.Option(
            help="The evaluation data folder (default: $ROUTER_DATA, else ../shared/data from "
            "here or from the checkout). docs/data.md says where each set comes from."
        ),
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
    estimator_file: Annotated[
        Path | None,
        typer.Option(
            "--estimator", help="Measure this estimator file instead of the configured one."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """APGR, CPT(50%), CPT(80%) and AUROC for the estimator and its baselines (RouteLLM's
    protocol): the v0 heuristic, random (mean of 10 seeds), prompt length, LiteLLM's complexity
    router, oracle."""
    from router.complexity import HeuristicEstimator, estimator_name
    from router.complexity import evaluation as ev
    from router.types import ChatRequest

    paired_sets: list[ev.Paired] = [ev.read_paired(p) for p in paired or []]
    labelled_sets: list[ev.Labelled] = [ev.read_labelled(p) for p in labelled or []]
    if not paired_sets and not labelled_sets:
        paired_sets, labelled_sets = ev.shared_sets(_data_folder(data))
    estimator = configured_estimator(config, estimator_file)
    v0 = HeuristicEstimator()

    def ours(prompt: str) -> float:
        return estimator.score(ChatRequest([{"role": "user", "content": prompt}]))

    def heuristic(prompt: str) -> float:
        return v0.score(ChatRequest([{"role": "user", "content": prompt}]))

    rows: list[dict[str, Any]] = [
        ev.evaluate(f"router ({estimator_name(estimator)})", [ours], paired_sets, labelled_sets),
        ev.evaluate("router v0 heuristic", [heuristic], paired_sets, labelled_sets),
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
