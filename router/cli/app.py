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
import os
import sys
import traceback
from typing import Annotated, Any

import typer

from router.cli.alerts import alerts_app
from router.cli.common import (
    ConfigOption,
    JsonOption,
    echo_err,
    loading_spinner,
    status_line,
    write_stream,
)
from router.cli.estimator import calibrate, evaluate, score
from router.cli.export import export
from router.cli.governance import audit, budget_app
from router.cli.init import init
from router.cli.keys import keys_app
from router.cli.learn import learn
from router.cli.limits import limits_app
from router.cli.logs import logs, report, stats
from router.cli.models import models, ps, pull
from router.cli.quality import quality
from router.cli.serve import serve
from router.errors import RequestError, RouterError, exit_code
from router.types import ROUTING_MODES

app = typer.Typer(
    help="Local-first LLM router: cheap requests to a local GGUF model, hard ones to the cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ModelOption = Annotated[
    str, typer.Option("--model", "-m", help=f"{', '.join(ROUTING_MODES)} or a model name.")
]
SystemOption = Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="ROUTER_URL",
        help="A running 'router serve' to answer through, http://HOST:PORT (default: "
        "$ROUTER_URL, else the [server] address when a router with this models.toml is there).",
        show_default=False,
    ),
]
InProcessOption = Annotated[
    bool,
    typer.Option("--in-process", help="Answer in this process, even when a server runs."),
]
MaxTokensOption = Annotated[
    int | None, typer.Option("--max-tokens", min=1, help="Cap the answer's length.")
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"router {version('router')}")
        except PackageNotFoundError:  # running from a checkout that was never installed
            typer.echo("router (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Local-first LLM router. Add --debug to any command for full tracebacks."""


def _messages(system: str | None, text: str) -> list[dict[str, Any]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]


@app.command(short_help="Answer a prompt, or talk interactively.")
def chat(
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            help="The prompt (several words are joined). Text piped to stdin comes first; "
            "'-' reads only stdin. No prompt on a terminal: interactive chat.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = "auto",
    system: SystemOption = None,
    resume: Annotated[
        bool,
        typer.Option("--continue", "-c", help="Continue the last conversation."),
    ] = False,
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
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            "-u",
            envvar="ROUTER_USER",
            help="Who is asking: recorded, budgeted and audited under this name "
            "(default: $ROUTER_USER, else anonymous).",
        ),
    ] = None,
    url: UrlOption = None,
    in_process: InProcessOption = False,
    config: ConfigOption = None,
) -> None:
    """Chat: answer PROMPT (streamed to stdout, the route to stderr), or talk interactively.

    A running `router serve` answers when one is at --url ($ROUTER_URL), or at the [server]
    address of this same models.toml; --in-process answers in this process."""
    from router.cli import conversation as conv
    from router.cli.remote import find_server
    from router.config import load_config
    from router.engine.pipeline import Router

    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    words = prompt or []
    interactive = not words and sys.stdin.isatty() and not as_json
    earlier = conv.with_system(conv.load_last(), system) if resume else []
    loaded = load_config(config)
    served = find_server(loaded, url, in_process)
    via = f" (served by {served.url})" if served is not None else ""
    with served or Router(loaded, loading=loading_spinner) as router:
        if interactive:
            from router.cli import repl

            repl.run(
                router,
                mode=model,
                system=system,
                params=params,
                cache=not no_cache,
                history=conv.state_dir() / "chat_history",
                messages=earlier or None,
                user=user,
                via=via,
            )
            return
        text = conv.prompt_text(words, conv.piped_stdin() if words != ["-"] else sys.stdin.read())
        if not text.strip():
            raise RequestError(
                'no prompt: give one (router chat "Hello"), pipe text in, or run router chat '
                "on a terminal to talk"
            )
        if resume:
            messages = [*earlier, {"role": "user", "content": text}]
        else:
            messages = _messages(system, text)
        if as_json:
            done = router.complete(messages, model, user=user, cache=not no_cache, **params)
            conv.save_last([*messages, {"role": "assistant", "content": done.text}])
            routing = {**done.routing.to_dict(), "served_by": served.url if served else None}
            typer.echo(json.dumps({**done.response, "routing": routing}, indent=2))
            return
        stream = router.stream(messages, model, user=user, cache=not no_cache, **params)
        parts: list[str] = []
        try:
            write_stream(stream, parts)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped reading (`| head -1`): it has what it wanted. Not an error;
            # the answer stops here and the request is recorded as stopped early.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            stream.close()  # a closed pipe (| head) stops the answer; the ledger still has it
            conv.save_last([*messages, {"role": "assistant", "content": "".join(parts)}])
        echo_err(status_line(stream.routing) + via)


@app.command(short_help="Show how a prompt would be routed, calling no model.")
def explain(
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            help="The prompt (several words are joined); piped stdin comes first, as in chat.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = "auto",
    system: SystemOption = None,
    max_tokens: MaxTokensOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show the score, the signals behind it and the routing decision. Calls no model."""
    from router.cli import conversation as conv
    from router.engine.pipeline import Router
    from router.engine.policy import blockers, estimate_prompt_tokens
    from router.types import ChatRequest

    words = prompt or []
    text = conv.prompt_text(words, conv.piped_stdin() if words != ["-"] else sys.stdin.read())
    if not text.strip():
        raise RequestError('no prompt: give one (router explain "Hello") or pipe text in')
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


# `router -h` lists the commands in this order, each with its one-line summary.
app.command(short_help="Serve the OpenAI-compatible API on a port.")(serve)
app.command(short_help="List the configured models and whether each is usable.")(models)
app.command(short_help="Write your models.toml, with your own local server.")(init)
app.command(short_help="Download a hub model's GGUF file ahead of time.")(pull)
app.command(short_help="Show what a running server has loaded.")(ps)
app.command(short_help="Show the latest requests from the ledger.")(logs)
app.command(short_help="Requests, tokens, cost and savings, summed.")(stats)
app.command(short_help="Write the savings dashboard as one HTML file.")(report)
app.command(short_help="How often local answers were rated good enough.")(quality)
app.command(short_help="Write stored conversations as a clean fine-tuning set.")(export)
app.add_typer(keys_app, name="keys")
app.add_typer(limits_app, name="limits")
app.add_typer(alerts_app, name="alerts")
app.add_typer(budget_app, name="budget")
app.command(short_help="Flag accounts far above their peers.")(audit)
app.command(short_help="Score JSON lines of prompts on stdin.")(score)
app.command("eval", short_help="Measure the estimator on public data.")(evaluate)
app.command(short_help="Set a local model's ceiling from real traffic.")(calibrate)
app.command(short_help="Learn an estimator from this deployment's verdicts and ratings.")(learn)


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
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        # Click turns a closed stdout (`router logs | head -1`) into a silent exit 1 after
        # swapping stdout for its PacifyFlushWrapper: the reader stopped, which is no error.
        closed_pipe = type(sys.stdout).__name__ == "PacifyFlushWrapper"
        code = 0 if closed_pipe and exc.code == 1 else exc.code
    except RouterError as exc:
        code = _fail(exc, f"error: {exc}", exit_code(exc), debug)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        code = _fail(
            exc, f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)", 1, debug
        )
    sys.exit(code)


def _fail(exc: BaseException, line: str, code: int, debug: bool) -> int:
    """One line on stderr, or the whole traceback with --debug; the same exit code either way."""
    if debug:
        traceback.print_exception(exc)
    else:
        echo_err(line)
    return code
