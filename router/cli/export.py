"""`router export`: the ledger's stored conversations as a clean fine-tuning set
(router.governance.export), from this machine's ledger or, with --url, a running server's."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli import admin_client
from router.cli.admin_client import KeyOption, UrlOption
from router.cli.common import ConfigOption, echo_err
from router.errors import RequestError
from router.governance.export import RATINGS


def export(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (whole, or not at all); unset: stdout."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl: one chat-format record per line.")
    ] = "jsonl",
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d (at most 400d).")] = "30d",
    user: Annotated[
        list[str] | None,
        typer.Option("--user", "-u", metavar="NAME", help="Only this user's rows (repeatable)."),
    ] = None,
    team: Annotated[
        list[str] | None,
        typer.Option(metavar="TEAM", help="Only the rows of this team's users (repeatable)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(metavar="CATEGORY", help="Only this task category (repeatable)."),
    ] = None,
    min_rating: Annotated[
        str,
        typer.Option(help="unrated: leave out answers rated bad; good: only answers rated good."),
    ] = "unrated",
    judged_acceptable: Annotated[
        bool,
        typer.Option(
            "--judged-acceptable",
            help="Only answers shadow judging found acceptable (those found unacceptable are "
            "always left out).",
        ),
    ] = False,
    include_flagged: Annotated[
        bool,
        typer.Option("--include-flagged", help="Keep rows flagged low-value or repeat."),
    ] = False,
    include_cache_hits: Annotated[
        bool, typer.Option("--include-cache-hits", help="Keep answers given from the cache.")
    ] = False,
    metadata: Annotated[
        bool,
        typer.Option(
            "--metadata", help="Add each row's id, user, model, category, rating and verdict."
        ),
    ] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the stored conversations as training records: messages and answer, leaving out
    unfinished, refused, cached, flagged and cut rows; say what each filter removed."""
    if fmt != "jsonl":
        raise RequestError(f"--format {fmt!r}: jsonl is the one format")
    if min_rating not in RATINGS:
        raise RequestError(f"--min-rating {min_rating!r}: choose {' or '.join(RATINGS)}")
    options: dict[str, Any] = {
        "users": user or [],
        "teams": team or [],
        "categories": category or [],
        "min_rating": min_rating,
        "judged_acceptable": judged_acceptable,
        "include_flagged": include_flagged,
        "include_cache_hits": include_cache_hits,
    }
    if url is not None:
        lines, summary = _remote(url, key, since, options, metadata)
    else:
        lines, summary = _local(config, since, options, metadata)
    _write(output, lines)
    _report(summary, output)


def _local(
    config: Path | None, since: str, options: dict[str, Any], metadata: bool
) -> tuple[bytes, dict[str, Any]]:
    from router.config import load_config
    from router.engine.stores import open_ledger
    from router.governance import export as exporting

    cfg = load_config(config)
    chosen = exporting.filters(cfg, **options)
    with open_ledger(cfg) as ledger:
        done = exporting.read(ledger, since, chosen, metadata=metadata)
    summary = done.summary()
    if not cfg.router.store_prompts:
        summary["hint"] = "[router] store_prompts is off in models.toml: no new row keeps its text"
    return "".join(done.lines()).encode(), summary


def _remote(
    url: str, key: str | None, since: str, options: dict[str, Any], metadata: bool
) -> tuple[bytes, dict[str, Any]]:
    params: dict[str, str | list[str] | None] = {
        "since": since,
        "user": options["users"],
        "team": options["teams"],
        "category": options["categories"],
        "min_rating": options["min_rating"],
    }
    for flag in ("judged_acceptable", "include_flagged", "include_cache_hits"):
        params[flag] = "true" if options[flag] else None
    params["metadata"] = "true" if metadata else None
    headers, body = admin_client.fetch(url, key, "GET", "/export" + admin_client.query(**params))
    summary = json.loads({k.lower(): v for k, v in headers.items()}.get("x-router-export", "{}"))
    return body, summary


def _write(output: Path | None, lines: bytes) -> None:
    if output is None:
        sys.stdout.buffer.write(lines)
        sys.stdout.flush()
        return
    folder = output.parent
    if not folder.is_dir():
        raise RequestError(f"--output {output}: the folder {folder} does not exist")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(lines)
        os.replace(temporary, output)  # whole or not at all: a reader never sees half
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _report(summary: dict[str, Any], output: Path | None) -> None:
    removed = summary.get("removed") or {}
    where = f" to {output}" if output else ""
    echo_err(
        f"router export: {summary.get('exported', 0)} records{where} from "
        f"{summary.get('read', 0)} rows"
    )
    for step, count in removed.items():
        echo_err(f"  {count:>8}  removed: {step}")
    if summary.get("hint") and not summary.get("exported"):
        echo_err(f"  {summary['hint']}")
