"""pydantic's validation errors as models.toml's reader needs them: file, key, what was wrong."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


def describe(exc: ValidationError, source: Path | None) -> str:
    lines = [f"{source or 'config'}: invalid configuration"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # Drop pydantic's discriminator tag ("models.x.local.n_ctx" -> "models.x.n_ctx").
        if len(loc) >= 3 and loc[0] == "models" and loc[2] in {"local", "cloud"}:
            del loc[2]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see models.toml docs)")
        elif err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            lines.append(f'  {key}: \'tier\' must be "local" or "cloud"')
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}{shown}" if key else f"  {msg}")
    return "\n".join(lines)
