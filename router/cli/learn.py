"""`router learn`: fit an estimator to this deployment's own traffic, adopt it only if it is
better than the shipped one on held-out labels (router.complexity.learned)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from router.cli.common import ConfigOption, JsonOption, parse_since
from router.complexity.evaluation import truth
from router.errors import RequestError

if TYPE_CHECKING:
    from router.complexity.learned import Metric
    from router.config import Config
    from router.ledger import Entry
    from router.types import ChatRequest

MIN_TO_TRY = 10  # fewer labels than this: nothing to cross-validate


@dataclass
class Labels:
    """Prompts with what they needed: `target` 1 = the cloud, 0 = the local model was enough
    (or in between); paired sets also keep each model's correctness for APGR."""

    source: str
    requests: list[ChatRequest] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    weak: list[float] = field(default_factory=list)
    strong: list[float] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return bool(self.weak)

    def metric(self) -> tuple[str, Metric]:
        """APGR for paired sets (RouteLLM's protocol), AUROC for labels."""
        from router.complexity.evaluation import apgr, auroc

        if self.paired:

            def paired_apgr(scores: Any, positions: Any) -> float:
                idx = list(positions)
                weak, strong = [self.weak[i] for i in idx], [self.strong[i] for i in idx]
                return apgr(list(scores), weak, strong)["apgr"]

            return "APGR", paired_apgr

        def labelled_auroc(scores: Any, positions: Any) -> float:
            return auroc(list(scores), [round(self.target[i]) for i in positions])

        return "AUROC", labelled_auroc


def _request(row: dict[str, Any]) -> ChatRequest:
    from router.types import ChatRequest

    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    return ChatRequest(messages)


def _lines(path: Path, option: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RequestError(f"{option} {path}: cannot read: {why}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("a line must be a JSON object")
            except (json.JSONDecodeError, TypeError) as exc:
                raise RequestError(f"{option} {path} line {number}: {exc}") from None
            yield number, row


def read_paired(path: Path) -> Labels:
    """RouteLLM's CSV (prompt, weak model's correctness, strong model's) or JSON lines
    {"prompt" or "messages", "weak", "strong"}."""
    labels = Labels(f"--paired {path}")
    if path.suffix.lower() == ".csv":
        from router.complexity.evaluation import read_paired as read_csv

        try:
            data = read_csv(path)
        except (OSError, IndexError, ValueError, StopIteration) as exc:
            raise RequestError(
                f"--paired {path}: expected RouteLLM's CSV: a header, then prompt, weak model's "
                f"correctness, strong model's correctness ({type(exc).__name__}: {exc})"
            ) from None
        rows: list[tuple[dict[str, Any], Any, Any]] = [
            ({"prompt": x}, w, s)
            for x, w, s in zip(data.prompts, data.weak, data.strong, strict=True)
        ]
        numbered = list(enumerate(rows, start=2))  # line 1 is the header
    else:
        numbered = [(n, (r, r.get("weak"), r.get("strong"))) for n, r in _lines(path, "--paired")]
    for number, (row, weak, strong) in numbered:
        try:
            request = _request(row)
            w, s = truth(weak, "weak"), truth(strong, "strong")
        except (KeyError, TypeError, ValueError, RequestError) as exc:
            raise RequestError(
                f'--paired {path} line {number}: expected {{"prompt": "...", "weak": true, '
                f'"strong": false}} ({type(exc).__name__}: {exc})'
            ) from None
        labels.requests.append(request)
        labels.weak.append(w)
        labels.strong.append(s)
        labels.target.append((s - w + 1) / 2)
    return labels


def read_labelled(path: Path) -> Labels:
    """JSON lines {"prompt" or "messages", "label"}: 1 = needs the cloud, 0 = local is enough."""
    labels = Labels(f"--labelled {path}")
    for number, row in _lines(path, "--labelled"):
        try:
            request = _request(row)
            label = truth(row["label"], "label")
        except (KeyError, TypeError, ValueError, RequestError) as exc:
            raise RequestError(
                f'--labelled {path} line {number}: expected {{"prompt": "...", "label": 1}} '
                f"({type(exc).__name__}: {exc})"
            ) from None
        labels.requests.append(request)
        labels.target.append(label)
    return labels


def ledger_label(entry: Entry) -> float | None:
    """What a ledger row says the request needed: a person's rating of a local answer first,
    else the judge's verdict; None when neither says."""
    if entry.tier == "local" and entry.rating in ("good", "bad"):
        return 1.0 if entry.rating == "bad" else 0.0
    if entry.verdict in ("acceptable", "unacceptable"):
        return 1.0 if entry.verdict == "unacceptable" else 0.0
    return None


def read_ledger(cfg: Config, since: str) -> Labels:
    from router.engine.stores import open_ledger
    from router.types import ChatRequest

    labels = Labels(f"the ledger, last {since}")
    unlabelled_prompts = without_prompt = 0
    with open_ledger(cfg) as ledger:
        entries = ledger.entries(parse_since(since))
    for e in entries:
        label = ledger_label(e)
        if label is None:
            unlabelled_prompts += e.prompt is not None
            continue
        if e.prompt is None:
            without_prompt += 1
            continue
        try:
            labels.requests.append(ChatRequest(json.loads(e.prompt)))
        except (ValueError, RequestError):
            continue
        labels.target.append(label)
    if len(labels.target) < MIN_TO_TRY:
        hint = (
            f"; {without_prompt} judged or rated requests have no prompt stored: set "
            "[router] store_prompts = true to learn from them"
            if without_prompt
            else ""
        )
        raise RequestError(
            f"only {len(labels.target)} labelled requests with prompts in the ledger (last "
            f"{since}){hint}. Turn on shadow judging ([quality] in models.toml), rate answers "
            "(/good, /bad, POST /v1/feedback), or learn from a file: --paired FILE or "
            "--labelled FILE"
        )
    return labels


def default_out(cfg: Config) -> Path:
    """estimator.json next to models.toml (in the current directory when the shipped default
    config is in use: the package's folder is no place for a deployment's files)."""
    from router.config import shipped_default_path

    source = cfg.source or shipped_default_path()
    if source.resolve() == shipped_default_path().resolve():
        return Path.cwd() / "estimator.json"
    return source.parent / "estimator.json"


def learn(
    paired: Annotated[
        Path | None,
        typer.Option(
            help="Learn from a paired file: RouteLLM CSV or JSON lines {prompt, weak, strong}, "
            "each model's correctness (true/false or 0-1)."
        ),
    ] = None,
    labelled: Annotated[
        Path | None,
        typer.Option(help="Learn from JSON lines {prompt, label}: 1 = needs the cloud."),
    ] = None,
    since: Annotated[
        str, typer.Option(help="Without a file: the ledger window to learn from.")
    ] = "90d",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the estimator (default: estimator.json by models.toml)."),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the folds.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Measure, write nothing.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Learn an estimator from this deployment's labels (the judge's verdicts and people's
    ratings in the ledger, or a file); write it only if it beats the shipped one on held-out
    labels (k-fold cross-validation)."""
    from router.complexity import learned
    from router.complexity.calibration import write_atomically
    from router.complexity.structure import StructureEstimator
    from router.config import load_config

    if paired is not None and labelled is not None:
        raise RequestError("give one of --paired FILE or --labelled FILE (or neither: the ledger)")
    cfg = load_config(config)
    if paired is not None:
        labels = read_paired(paired)
    elif labelled is not None:
        labels = read_labelled(labelled)
    else:
        labels = read_ledger(cfg, since)
    n = len(labels.target)
    if n < MIN_TO_TRY:
        raise RequestError(f"{labels.source}: {n} labelled prompts; at least {MIN_TO_TRY} needed")
    if not labels.paired and len({round(t) for t in labels.target}) < 2:
        raise RequestError(
            f"{labels.source}: every label is {round(labels.target[0])}: learning needs prompts "
            "that needed the cloud and prompts that did not"
        )
    metric_name, metric = labels.metric()
    started = time.perf_counter()
    shipped = StructureEstimator()
    examples = [learned.example(r, shipped) for r in labels.requests]
    try:
        verdict = learned.cross_validate(examples, labels.target, metric, folds, seed)
    except ValueError as exc:
        raise RequestError(f"{labels.source}: {exc}") from None
    path = out or default_out(cfg)
    report: dict[str, Any] = {
        "source": labels.source,
        "labels": n,
        "metric": metric_name,
        "folds": folds,
        "learned": round(verdict.learned, 4),
        "shipped": round(verdict.shipped, 4),
        "fold_results": [[round(a, 4), round(b, 4)] for a, b in verdict.folds],
        "adopted": verdict.adopt,
        "why": verdict.why(),
        "path": None,
        "name": None,
    }
    if verdict.adopt:
        info = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "labels": n,
            "source": labels.source,
            "metric": metric_name,
            "cv": {"learned": report["learned"], "shipped": report["shipped"], "folds": folds},
        }
        estimator = learned.build(examples, labels.target, metric, info, seed)
        report["name"] = estimator.name
        report["mix"] = estimator.model.mix
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(estimator.to_json()) + "\n")
            report["path"] = str(path)
    report["seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(
        f"{n} labelled prompts from {labels.source}; {folds}-fold cross-validation, "
        f"{metric_name} on held-out prompts:"
    )
    typer.echo(f"  learned  {verdict.learned:.3f}")
    typer.echo(f"  shipped  {verdict.shipped:.3f}   (structure-v1)")
    if not verdict.adopt:
        typer.echo(f"not adopted: {verdict.why()}; nothing written, the current estimator stays")
        return
    typer.echo(f"adopted: {verdict.why()} (words weigh {estimator.model.mix:g} against v1)")
    if dry_run:
        typer.echo("dry run: nothing written")
        return
    where = cfg.source or "models.toml"
    typer.echo(f"wrote {path} ({estimator.name})")
    typer.echo(f'route with it: set estimator = "{path}" under [router] in {where}')
