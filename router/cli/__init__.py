"""The command line: `router chat`, `serve`, `explain`, `stats`, `models`, `budget`, `audit`,
`score`, `eval`, `calibrate`, `keys`, `limits`, `export`.

- `app`        the Typer app, the commands that need nothing else, exit codes and `main`
- `common`     options and output pieces every command shares
- `repl`       the interactive chat (`router chat` with no prompt)
- `serve`      `router serve`
- `keys`       `router keys` (with `admin_client`: --url, a running server's admin API)
- `limits`     `router limits`
- `governance` `router budget` and `router audit`
- `export`     `router export` (with `admin_client`: --url)
- `estimator`  `router score`, `eval` and `calibrate`
"""

from router.cli.app import app, main

__all__ = ["app", "main"]
