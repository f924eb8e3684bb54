"""The `router` command line (Typer). Every command takes --config.

Exit codes: 0 done; 1 unexpected error; 2 bad usage, configuration or request; 3 no model
available or every model failed; 4 `router audit --fail-on-flags` found flags; 5 a budget is
spent; 130 interrupted. Errors are one line on stderr; `--debug`
(anywhere on the command line) shows the traceback instead.

Nothing heavy is imported here: llama_cpp runs in the local model's worker process (only
`router models` loads it here, to read the build's features), litellm loads when a cloud model
is first called, so `router --help` and a locally answered chat stay fast.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from router.cli.common import (
    ConfigOption,
    JsonOption,
    echo_err,
    loading_spinner,
    parse_since,
    status_line,
)
from router.cli.estimator import calibrate, evaluate, score
from router.cli.governance import audit, budget_app
from router.cli.serve import keys_app, serve
from router.errors import (
    BackendError,
    BudgetExceededError,
    RequestError,
    RouterError,
    UnavailableError,
)
from router.ledger import GROUPS
from router.types import ROUTING_MODES

if TYPE_CHECKING:
    from router.config import LocalModel

app = typer.Typer(
    help="Local-first LLM router: cheap requests to a local GGUF model, hard ones to the cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(serve)
app.add_typer(keys_app, name="keys")
app.add_typer(budget_app, name="budget")
app.command()(audit)
app.command()(score)
app.command("eval")(evaluate)
app.command()(calibrate)

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help=f"{', '.join(ROUTING_MODES)} or a model name.")
]
SystemOption = Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")]
MaxTokensOption = Annotated[
    int | None, typer.Option("--max-tokens", min=1, help="Cap the answer's length.")
]


@app.callback()
def _root() -> None:
    """Local-first LLM router. Add --debug to any command for full tracebacks."""


def _messages(system: str | None, text: str) -> list[dict[str, Any]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]


@app.command()
def chat(
    prompt: Annotated[
        str | None,
        typer.Argument(help="The prompt; '-' reads stdin. None on a terminal: interactive chat."),
    ] = None,
    model: ModelOption = "auto",
    system: SystemOption = None,
    max_tokens: MaxTokensOption = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0, max=2, help="Sampling temperature.")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the cache.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the OpenAI-shaped response and routing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Chat: answer PROMPT (streamed to stdout, the route to stderr), or talk interactively."""
    from router.engine import Router

    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    interactive = prompt is None and sys.stdin.isatty() and not as_json
    with Router(config, loading=loading_spinner) as router:
        if interactive:
            import platformdirs

            from router.cli import repl

            history = platformdirs.user_state_path("router") / "chat_history"
            repl.run(
                router,
                mode=model,
                system=system,
                params=params,
                cache=not no_cache,
                history=history,
            )
            return
        text = sys.stdin.read() if prompt in (None, "-") else prompt
        messages = _messages(system, text or "")
        if as_json:
            done = router.complete(messages, model, cache=not no_cache, **params)
            typer.echo(json.dumps({**done.response, "routing": done.routing.to_dict()}, indent=2))
            return
        stream = router.stream(messages, model, cache=not no_cache, **params)
        try:
            for chunk in stream:
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
        finally:
            stream.close()
            sys.stdout.write("\n")
            sys.stdout.flush()
        echo_err(status_line(stream.routing))


@app.command()
def explain(
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads stdin.")],
    model: ModelOption = "auto",
    system: SystemOption = None,
    max_tokens: MaxTokensOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show the score, the signals behind it and the routing decision. Calls no model."""
    from router.engine import Router
    from router.policy import blockers, estimate_prompt_tokens
    from router.types import ChatRequest

    text = sys.stdin.read() if prompt == "-" else prompt
    request = ChatRequest(_messages(system, text), model, {"max_tokens": max_tokens})
    with Router(config) as router:
        score = router.score(request)
        explain_fn = getattr(router.estimator, "explain", None)
        signals: dict[str, float] = explain_fn(request) if explain_fn else {}
        needed = estimate_prompt_tokens(request) + int(
            request.params.get("max_tokens", router.config.router.default_max_tokens)
        )
        views = router.model_views()
        models: list[dict[str, Any]] = [
            {
                "name": v.name,
                "tier": v.tier,
                "ceiling": v.max_score,
                "n_ctx": v.n_ctx,
                "blocked_by": blockers(v, request, needed),
            }
            for v in views.values()
        ]
        error: RouterError | None = None
        try:
            decision = router.decide(request)
            outcome: dict[str, Any] = {
                "candidates": list(decision.candidates),
                "reason": decision.reason,
            }
        except RouterError as exc:
            error, outcome = exc, {"candidates": [], "reason": str(exc)}
    report = {
        "score": score,
        "signals": signals,
        "estimated_tokens": needed,
        "decision": outcome,
        "models": models,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        # Strongest first; + pushes towards the cloud, - keeps the request local.
        top = ", ".join(f"{k} {v:+.2f}" for k, v in list(signals.items())[:3]) or "none"
        typer.echo(f"score      {score:.2f}   (top signals: {top})")
        typer.echo(f"needs      ~{needed} tokens of context (prompt estimate + max_tokens)")
        chosen = outcome["candidates"]
        typer.echo(
            f"decision   {chosen[0] if chosen else 'none'}"
            + (f"   then {' → '.join(chosen[1:])}" if len(chosen) > 1 else "")
        )
        typer.echo(f"why        {outcome['reason']}")
        for m in models:
            state = "ok" if not m["blocked_by"] else "no: " + "; ".join(m["blocked_by"])
            typer.echo(f"  {m['name']:<16} {m['tier']:<6} ceiling {m['ceiling']:.2f}  {state}")
    if error is not None:
        raise error


@app.command()
def models(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List configured models: tier, usable now, context size, prices, ceiling."""
    from router.config import LocalModel, load_config
    from router.engine import Router
    from router.errors import ConfigError as _ConfigError
    from router.pricing import model_price

    cfg = load_config(config)
    with Router(cfg) as router:
        views = router.model_views()
    build = _llama_build() if any(isinstance(m, LocalModel) for m in cfg.models.values()) else ""
    rows: list[dict[str, Any]] = []
    for name, m in cfg.models.items():
        view = views.get(name)
        try:
            price = model_price(name, m)
            prices: tuple[float | None, float | None] = (
                price.input_per_mtok,
                price.output_per_mtok,
            )
        except _ConfigError:
            prices = (None, None)
        rows.append(
            {
                "name": name,
                "tier": m.tier,
                "enabled": m.enabled,
                "usable": bool(view and view.unusable is None),
                "why_not": (view.unusable if view else "disabled in models.toml"),
                "n_ctx": view.n_ctx if view else m.n_ctx,
                "input_per_mtok": prices[0],
                "output_per_mtok": prices[1],
                "max_score": m.max_score,
                "extra_buffers": _extra_buffers(m, build) if isinstance(m, LocalModel) else None,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models ({cfg.source})")
    columns = (
        "model",
        "tier",
        "usable",
        "context",
        "$/M in",
        "$/M out",
        "ceiling",
        "extra buffers",
    )
    for col in columns:
        table.add_column(col, justify="right" if col.startswith(("$", "con", "cei")) else "left")
    for r in rows:
        usable = "yes" if r["usable"] else f"no: {r['why_not']}"
        money = [
            f"{p:.2f}" if p is not None else "?"
            for p in (r["input_per_mtok"], r["output_per_mtok"])
        ]
        extra = r["extra_buffers"]
        table.add_row(
            r["name"],
            r["tier"],
            usable,
            str(r["n_ctx"] or "?"),
            *money,
            f"{r['max_score']:.2f}",
            "" if extra is None else extra["summary"],
        )
    Console(width=max(120, Console().width)).print(table)
    notes = {r["extra_buffers"]["why"] for r in rows if r["extra_buffers"]}
    for note in sorted(notes):
        typer.echo(f"extra buffers: {note}")


def _llama_build() -> str:
    """llama.cpp's system info, read in this process (loading the library runs no model)."""
    try:
        from router.backends.llama_process import system_info

        return system_info()
    except Exception as exc:  # a broken llama-cpp-python install: say so, list the rest
        return f"unknown ({type(exc).__name__}: {exc})"


def _extra_buffers(model: LocalModel, build: str) -> dict[str, Any]:
    """Whether the worker will load `model` with llama.cpp's extra buffer types, and why."""
    from router.backends.llama_process import extra_buffers_choice

    enabled, why = extra_buffers_choice(model.extra_buffers, build)
    summary = ("on" if enabled else "off") + (" (auto)" if model.extra_buffers == "auto" else "")
    return {"setting": model.extra_buffers, "enabled": enabled, "why": why, "summary": summary}


@app.command()
def stats(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d, 2w.")] = "7d",
    by: Annotated[str | None, typer.Option(help=f"Group rows by {', '.join(GROUPS)}.")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, cost and savings from the ledger."""
    from router.config import load_config
    from router.ledger import SQLiteLedger

    if by is not None and by not in GROUPS:
        raise RequestError(f"--by {by!r}: choose one of {', '.join(GROUPS)}")
    start = parse_since(since)
    cfg = load_config(config)
    with SQLiteLedger(cfg.ledger_path()) as ledger:
        totals = ledger.totals(start)
        groups = ledger.summary(start, by or "tier")
    rate = totals["cache_hits"] / totals["requests"] if totals["requests"] else 0.0
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "since": since,
                    **totals,
                    "cache_hit_rate": rate,
                    "by": by or "tier",
                    "groups": groups,
                },
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"router stats, last {since} ({cfg.ledger_path()})")
    columns = (
        by or "tier",
        "requests",
        "tokens",
        "cost $",
        "baseline $",
        "tokens saved",
        "$ saved",
        "cache hits",
    )
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for g in [*groups, {**totals, "group": "total"}]:
        table.add_row(
            str(g["group"]),
            str(g["requests"]),
            str(g["tokens"]),
            f"{g['cost_usd']:.4f}",
            f"{g['baseline_usd']:.4f}",
            str(g["tokens_saved"]),
            f"{g['usd_saved']:.4f}",
            str(g["cache_hits"]),
        )
    Console(width=max(100, Console().width)).print(table)
    typer.echo(f"cache hit rate {rate:.1%}")


def exit_code(exc: RouterError) -> int:
    if isinstance(exc, BudgetExceededError):
        return 5
    if isinstance(exc, (UnavailableError, BackendError)):
        return 3
    return 2  # configuration, request and usage errors


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    # The error line and the status line already say what went wrong (a crashed worker, a
    # fallback); the library's warnings show with --debug, and in `router serve`'s log.
    logging.basicConfig(
        format="%(levelname)s: %(name)s: %(message)s",
        level=logging.DEBUG if debug else logging.ERROR,
    )
    try:
        app()
    except RouterError as exc:
        if debug:
            raise
        echo_err(f"error: {exc}")
        sys.exit(exit_code(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if debug:
            raise
        echo_err(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)")
        sys.exit(1)
