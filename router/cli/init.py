"""`router init`: the user's own models.toml, laid over the shipped one, with the local tier a
newcomer already runs (Ollama, llama.cpp's llama-server) in place of the embedded smoke-test
model."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from router.errors import RequestError

# Where the local servers people already run listen by default.
KNOWN_SERVERS = ("http://127.0.0.1:11434", "http://127.0.0.1:8080")
PROBE_SECONDS = 0.5
# A ceiling for a 7B-class chat model: everyday questions, short rewrites, summaries stay
# local; code, analysis and long reasoning go to the cloud. `router calibrate` refines it.
SERVER_CEILING = 0.5


def served_models(url: str, timeout: float = PROBE_SECONDS) -> list[str] | None:
    """What an OpenAI-compatible server (or Ollama) at `url` serves, or None when nothing
    answers there."""
    import urllib.error
    import urllib.request

    base = url.rstrip("/").removesuffix("/v1")
    for path, read in (("/v1/models", _openai_ids), ("/api/tags", _ollama_names)):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                return read(json.load(response))
        except (urllib.error.URLError, OSError, ValueError, AttributeError, TypeError):
            continue
    return None


def _openai_ids(data: Any) -> list[str]:
    return sorted(str(m["id"]) for m in data["data"])


def _ollama_names(data: Any) -> list[str]:
    return sorted(str(m["name"]) for m in data["models"])


def render(local_url: str | None, local_model: str | None, found: dict[str, list[str]]) -> str:
    """The file's text: extends the shipped models.toml, the chosen server as the local tier
    (the embedded model off), each server found as a commented entry."""
    today = dt.date.today().isoformat()
    lines = [
        f"# Written by `router init` on {today}. It extends the shipped models.toml: every",
        "# shipped setting and model (the gpt-4o-mini cloud tier, set OPENAI_API_KEY) stays",
        "# unless a table below changes it. Remove `extends` to replace the shipped file whole.",
        'extends = "default"',
        "",
    ]
    if local_url and local_model:
        name = _slug(local_model)
        base = local_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        lines += [
            "# The embedded SmolLM2-135M is a smoke test: your server is the local tier now.",
            "[models.smollm2]",
            "enabled = false",
            "",
            f"[models.{name}]",
            'tier = "local"',
            f"api_base = {json.dumps(base)}",
            f"remote_model = {json.dumps(local_model)}",
            f"max_score = {SERVER_CEILING}   # requests scored up to this stay local;",
            "                 # `router calibrate` sets it from your traffic",
            "n_ctx = 8192",
            "",
        ]
    for url, names in found.items():
        if local_url and url.rstrip("/").removesuffix("/v1") == _root(local_url):
            continue
        for model in names[:10]:
            lines += [
                f"# Found at {url}: uncomment to use it as a local model (and turn smollm2 off).",
                f"# [models.{_slug(model)}]",
                '# tier = "local"',
                f"# api_base = {json.dumps(url.rstrip('/') + '/v1')}",
                f"# remote_model = {json.dumps(model)}",
                f"# max_score = {SERVER_CEILING}",
                "",
            ]
    lines += [
        '# More: a GGUF file of your own ([models.x] tier = "local", path = "...gguf"), a',
        "# model from Hugging Face (hf_repo + hf_file, then `router pull x`), other cloud",
        "# providers (litellm_model + api_key_env): see the README's Configuration.",
    ]
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:64] or "local-server"


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def init(
    local_url: Annotated[
        str | None,
        typer.Option("--local-url", help="An OpenAI-compatible server to use as the local tier."),
    ] = None,
    local_model: Annotated[
        str | None,
        typer.Option("--local-model", help="The model name that server knows (with --local-url)."),
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="Where to write it (default: the user config file)."),
    ] = None,
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe",
            metavar="URL",
            help="A server to look for (repeatable; default: Ollama's and llama-server's).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write your models.toml: the shipped settings, plus your local server as the local tier."""
    import platformdirs

    from router.config import APP_NAME, is_shipped_default, parse_toml

    if bool(local_url) != bool(local_model):
        raise RequestError("--local-url and --local-model go together: give both, or neither")
    target = path or Path(platformdirs.user_config_dir(APP_NAME)) / "models.toml"
    if target.exists() and not force:
        raise RequestError(f"{target} exists: edit it, or run router init --force to replace it")
    found: dict[str, list[str]] = {}
    for url in probe or KNOWN_SERVERS:
        served = served_models(url)
        if served is None:
            typer.echo(f"{url}: nothing answers", err=True)
            continue
        found[url] = served
        typer.echo(f"{url}: serves {', '.join(served) or 'no models'}", err=True)
    if local_url and local_model:
        served = found.get(local_url) or served_models(local_url, timeout=5)
        if served is None:
            typer.echo(f"warning: {local_url} does not answer now; written anyway", err=True)
        elif local_model not in served:
            typer.echo(
                f"warning: {local_url} does not list {local_model!r} (it lists "
                f"{', '.join(served) or 'nothing'}); `router models --probe` checks again",
                err=True,
            )
    text = render(local_url, local_model, found)
    parse_toml(text, target)  # what is written loads
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {target}")
    here = Path.cwd() / "models.toml"
    if here.is_file() and here.resolve() != target.resolve() and not is_shipped_default(here):
        typer.echo(
            f"note: {here} is read before {target} in this directory (`router models` says "
            "which file is in use); run from elsewhere, or pass --config",
            err=True,
        )
    if not local_url and found:
        typer.echo(
            "next: router init --force --local-url URL --local-model NAME, with a server and "
            "model listed above",
            err=True,
        )
    elif not local_url:
        typer.echo(
            "next: start a local server (ollama serve, llama-server -m model.gguf), then "
            "router init --force --local-url URL --local-model NAME; or put your GGUF's path "
            "in the file",
            err=True,
        )
