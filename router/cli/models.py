"""`router models`, `router pull` and `router ps`: the models configured, downloading a hub
model ahead of time, and what a running server has loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from router.cli.common import ConfigOption, JsonOption

if TYPE_CHECKING:
    from router.config import LocalModel


def models(
    probe: Annotated[
        bool,
        typer.Option(
            "--probe", help="Ask each server endpoint which models it serves (GET /v1/models)."
        ),
    ] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List configured models: tier, usable now, context size, prices, ceiling; with --probe,
    what each configured server endpoint serves."""
    from router.config import LocalModel, load_config
    from router.engine.pipeline import Router
    from router.errors import ConfigError as _ConfigError
    from router.ledger.pricing import model_price

    cfg = load_config(config)
    if probe:
        _probe_all(cfg, as_json)
        return
    with Router(cfg) as router:
        views = router.model_views()
    in_process = [m for m in cfg.models.values() if isinstance(m, LocalModel) and not m.remote]
    build = _llama_build() if in_process else ""
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
                "embeddings": m.embeddings,
                "extra_buffers": _extra_buffers(m, build)
                if isinstance(m, LocalModel) and not m.remote
                else None,
                "endpoints": m.endpoints() if isinstance(m, LocalModel) and m.remote else None,
                "file": _file(cfg, m),
            }
        )
    aliases = [{"name": pattern, "alias_of": target} for pattern, target in cfg.aliases.items()]
    if as_json:
        typer.echo(json.dumps(rows + aliases, indent=2))
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
        "runs",
    )
    for col in columns:
        table.add_column(col, justify="right" if col.startswith(("$", "con", "cei")) else "left")
    for r in rows:
        usable = "yes" if r["usable"] else f"no: {r['why_not']}"
        money = [
            f"{p:.2f}" if p is not None else "?"
            for p in (r["input_per_mtok"], r["output_per_mtok"])
        ]
        table.add_row(
            r["name"],
            r["tier"],
            usable,
            str(r["n_ctx"] or "?"),
            *money,
            "embeds" if r["embeddings"] else f"{r['max_score']:.2f}",
            _runs(r),
        )
    Console(width=max(120, Console().width)).print(table)
    for r in rows:
        if r["file"]:
            typer.echo(f"{r['name']}: {r['file']}")
    typer.echo(f"config: {cfg.source}" + _config_note(cfg))
    for alias in aliases:  # names clients send ([aliases])
        typer.echo(f"alias: {alias['name']} → {alias['alias_of']}")
    notes = {r["extra_buffers"]["why"] for r in rows if r["extra_buffers"]}
    for note in sorted(notes):
        typer.echo(f"extra buffers: {note}")


def _file(cfg: Any, model: Any) -> str | None:
    """Where a GGUF run by this router is (or will be, for a hub model not yet pulled)."""
    from router.config import LocalModel
    from router.config.model_files import local_path

    if not isinstance(model, LocalModel) or model.remote:
        return None
    found = local_path(cfg, model)
    if found is not None:
        return str(found)
    return f"{model.hf_repo}/{model.hf_file} (not downloaded)" if model.hf_repo else None


def _config_note(cfg: Any) -> str:
    """Where a user's own file goes, when the shipped one is in use."""
    import platformdirs

    from router.config import APP_NAME, shipped_default_path

    if cfg.source is None or Path(cfg.source).resolve() != shipped_default_path().resolve():
        return ""
    mine = Path(platformdirs.user_config_dir(APP_NAME)) / "models.toml"
    return f" (the shipped default; `router init` writes your own to {mine})"


def _runs(row: dict[str, Any]) -> str:
    """Where a model runs: its server endpoints, or the in-process worker's extra buffers."""
    if row["endpoints"]:
        return ", ".join(row["endpoints"])
    extra = row["extra_buffers"]
    return "" if extra is None else f"here, extra buffers {extra['summary']}"


def _answers_anyway(base: str, wanted: str, key: str | None) -> bool:
    """Whether a server answers a model name it does not list (llama_cpp.server lists its file
    and answers any name): one chat of one token."""
    import urllib.request

    body = {"model": wanted, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    request = urllib.request.Request(
        f"{base}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # urllib's HTTPError (a 404) is an OSError
        return False


def _probe_all(cfg: Any, as_json: bool) -> None:
    """What every configured server endpoint serves: remote local models' api_base (each of a
    pool) and cloud models with an api_base. Unreachable ones say why, and the command exits
    3. A local server that does not list the name asked for is asked once (one token) whether
    it answers it anyway."""
    import urllib.error
    import urllib.request

    from router.config import CloudModel, LocalModel

    rows: list[dict[str, Any]] = []
    for name, m in cfg.models.items():
        if isinstance(m, LocalModel) and m.remote:
            bases, wanted, key = m.endpoints(), m.remote_model, m.api_key()
        elif isinstance(m, CloudModel) and m.resolved_api_base():
            base = str(m.resolved_api_base()).rstrip("/")
            bases, wanted, key = [base], m.litellm_model.split("/", 1)[-1], m.api_key()
        else:
            continue
        for base in bases:
            row: dict[str, Any] = {"model": name, "endpoint": base, "wanted": wanted}
            request = urllib.request.Request(f"{base}/models")
            if key:
                request.add_header("Authorization", f"Bearer {key}")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    data = json.load(response)
                row["serves"] = sorted(str(d.get("id")) for d in data.get("data", []))
                row["error"] = None
            except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
                row["serves"], row["error"] = [], str(getattr(exc, "reason", exc))[:200]
            row["answers_any_name"] = (
                row["error"] is None
                and wanted not in row["serves"]
                and isinstance(m, LocalModel)  # a cloud's answer would be paid for
                and _answers_anyway(base, str(wanted), key)
            )
            rows.append(row)
    unreachable = any(r["error"] for r in rows)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no server endpoints configured (api_base on a model)", err=True)
    for r in rows if not as_json else []:
        if r["error"]:
            typer.echo(f"{r['model']:<16} {r['endpoint']}  cannot be reached: {r['error']}")
            continue
        if r["wanted"] in r["serves"]:
            found = "found"
        elif r["answers_any_name"]:
            found = f"answers any model name ({r['wanted']!r} is not listed but answered)"
        else:
            found = f"NOT served ({r['wanted']!r})"
        typer.echo(f"{r['model']:<16} {r['endpoint']}  {found}; serves: {', '.join(r['serves'])}")
    if unreachable:
        raise typer.Exit(3)


def _llama_build() -> str:
    """llama.cpp's system info, read in this process (loading the library runs no model)."""
    try:
        from router.backends.llama_process import system_info

        return system_info()
    except Exception as exc:  # a broken llama-cpp-python install: say so, list the rest
        return f"unknown ({type(exc).__name__}: {exc})"


def _extra_buffers(model: LocalModel, build: str) -> dict[str, Any]:
    """Whether the worker will load `model` with llama.cpp's extra buffer types, and why."""
    from router.backends.buffers import choice as extra_buffers_choice

    enabled, why = extra_buffers_choice(model.extra_buffers, build)
    summary = ("on" if enabled else "off") + (" (auto)" if model.extra_buffers == "auto" else "")
    return {"setting": model.extra_buffers, "enabled": enabled, "why": why, "summary": summary}


def pull(
    name: Annotated[str, typer.Argument(help="A local model from models.toml (hf_repo).")],
    config: ConfigOption = None,
) -> None:
    """Download a hub model's GGUF file ahead of its first request: a progress bar, resumed
    where an interrupted download stopped, and checked against the hub's SHA-256."""
    from router.config import LocalModel, load_config
    from router.config.model_files import local_problem
    from router.errors import RequestError, UnknownModelError

    cfg = load_config(config)
    model = cfg.models.get(name)
    if model is None:
        raise UnknownModelError(name, list(cfg.models))
    if not isinstance(model, LocalModel):
        raise RequestError(f"{name!r} is a cloud model: there is nothing to download")
    if model.hf_repo is None:
        problem = local_problem(cfg, name, model)
        if problem is None:
            typer.echo(f"{name}: its file is already here; nothing to download", err=True)
            return
        raise RequestError(f"{name}: {problem}; only hf_repo models are downloaded by pull")
    from router.config.hub import download

    path = download(model.hf_repo, str(model.hf_file))
    size = path.stat().st_size / 2**20
    typer.echo(str(path))
    typer.echo(
        f"{name}: {model.hf_repo}/{model.hf_file} is here ({size:,.0f} MB, checksum verified)"
        + ("" if model.enabled else f"; set enabled = true under [models.{name}] to use it"),
        err=True,
    )


def ps(
    url: Annotated[
        str | None,
        typer.Option(help="The router server (default: http://<server.host>:<server.port>)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="ROUTER_API_KEY",
            help="An admin key, for a server off loopback ($ROUTER_API_KEY); on loopback "
            "none is needed.",
        ),
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """What a running `router serve` has loaded: each local model's worker, its memory and the
    requests it is answering or queueing."""
    import urllib.error
    import urllib.request

    from router.config import load_config
    from router.errors import UnavailableError

    if url is None:
        cfg = load_config(config)
        url = f"http://{cfg.server.host}:{cfg.server.port}"
    url = url.rstrip("/").removesuffix("/v1")
    # /health shows its details to a key: any on loopback, an admin's elsewhere.
    asked = urllib.request.Request(
        f"{url}/health", headers={"Authorization": f"Bearer {key or 'local'}"}
    )
    try:
        with urllib.request.urlopen(asked, timeout=5) as response:
            health: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise UnavailableError(
            f"no router server answers at {url} ({why}): start one with 'router serve', or "
            "give --url"
        ) from None
    if "models" not in health:
        raise UnavailableError(
            f"the router at {url} says {health.get('status')!r} and shows its details only to "
            "an admin key: give --key or set $ROUTER_API_KEY ('router keys create --role admin')"
        )
    rows = [
        {"name": name, **(info.get("worker") or {}), "usable": info.get("usable")}
        for name, info in health.get("models", {}).items()
        if info.get("tier") == "local"
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'MODEL':<16} {'STATE':<12} {'PID':>7} {'MEMORY':>9} {'BUSY':>6}  {'KV CACHE':<22} "
        "GENERATIONS"
    )
    for r in rows:
        state = str(r.get("state", "?"))
        memory = f"{r['rss_mb']:,.0f} MB" if r.get("rss_mb") else "-"
        busy = f"{r.get('in_flight', 0)}" + (f"/{r['max_queue']}" if r.get("max_queue") else "")
        done = ", ".join(f"{k} {v}" for k, v in (r.get("generations") or {}).items()) or "-"
        kv = r.get("kv_cache")
        held = f"{kv['conversations']} conv, {kv['mb']:g}/{kv['budget_mb']:g} MB" if kv else "-"
        typer.echo(
            f"{r['name']:<16} {state.split(';')[0][:12]:<12} {r.get('pid') or '-':>7} "
            f"{memory:>9} {busy:>6}  {held:<22} {done}"
        )
        for c in (kv or {}).get("saved", []):  # each saved conversation, newest first
            typer.echo(
                f"  conversation: {c['tokens']:,} tokens, {c['mb']:g} MB, idle {c['idle_s']:.0f} "
                f"s, resumed {c['restored']} times"
            )
        for e in r.get("endpoints") or []:  # a remote model: each server of its pool
            out = f", out {e['ejected_for_seconds']:.0f} s more" if e["state"] == "ejected" else ""
            why = f" ({e['last_error']})" if e.get("last_error") else ""
            typer.echo(
                f"  {e['url']}  {e['state']}{out}, {e['in_flight']} in flight, "
                f"{e['served']} served, {e['failures']} failures{why}"
            )
    if not rows:
        typer.echo("no local models configured on that server", err=True)
