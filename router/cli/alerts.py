"""`router alerts test`: send a sample alert to [alerts] webhook now, and say what happened."""

from __future__ import annotations

import urllib.parse

import typer

from router.cli.common import ConfigOption
from router.errors import RequestError, UnavailableError

alerts_app = typer.Typer(help="Real-time alerts ([alerts] in models.toml).")


@alerts_app.command("test")
def alerts_test(config: ConfigOption = None) -> None:
    """Send a sample alert (event `test`) to the webhook, with its retries, and wait for it."""
    from router.config import load_config
    from router.governance.alerts import Alerts

    cfg = load_config(config)
    if cfg.alerts is None:
        raise RequestError(
            f'{cfg.source}: no [alerts] section: add [alerts] with webhook = "https://..." '
            '(and format = "slack" for a Slack incoming webhook)'
        )
    alerts = Alerts(cfg.alerts, claim=lambda key, window: True)
    took = alerts.deliver(
        "test",
        "router alerts test",
        "a test alert from 'router alerts test': this webhook receives the router's alerts",
        {"source": str(cfg.source)},
    )
    parts = urllib.parse.urlsplit(cfg.alerts.webhook or "")
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"  # its path may be a secret
    if cfg.alerts.webhook is None:
        typer.echo("no webhook in [alerts]: alerts are log lines only (router.alerts)", err=True)
    elif not took:
        raise UnavailableError(
            f"the webhook {shown} did not take the alert after "
            f"{cfg.alerts.retries + 1} tries (the log line says why)"
        )
    else:
        typer.echo(f"sent to {shown} ({cfg.alerts.format})", err=True)
