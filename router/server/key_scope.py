"""A key's owner and scope: whom it belongs to, its role, the modes and models it may ask for,
its own rpm and daily dollars, when it expires; and the checks `router keys` and the admin API
share (router.server.keys stores them)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.config import Config
from router.errors import RequestError
from router.ledger import duration
from router.types import ROUTING_MODES

ROLES = ("user", "admin")


@dataclass(frozen=True)
class KeyOwner:
    """Whom a key belongs to, and what it may see: a `user` key only that user's own figures
    and answers; an `admin` key everyone's, /metrics and /health's details. And its scope:
    `models` it may ask for (empty: any), its own `rpm`, `tpm` and `daily_usd` (limits and a
    budget of its own on top of its user's), when it `expires` (Unix time)."""

    name: str
    role: str = "user"
    key_id: str = field(default="", compare=False)
    models: tuple[str, ...] = field(default=(), compare=False)
    rpm: int | None = field(default=None, compare=False)
    expires: float | None = field(default=None, compare=False)
    daily_usd: float | None = field(default=None, compare=False)
    tpm: int | None = field(default=None, compare=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def expiry(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires or 0))


@dataclass(frozen=True)
class KeyInfo:
    """A key as `router keys list` shows it (never the key itself)."""

    key_id: str
    user: str
    role: str
    created: float
    expires: float | None = None
    models: tuple[str, ...] = ()
    rpm: int | None = None
    last_used: float | None = None
    daily_usd: float | None = None
    tpm: int | None = None

    def owner(self) -> KeyOwner:
        return KeyOwner(
            self.user, self.role, self.key_id, self.models, self.rpm, self.expires,
            self.daily_usd, self.tpm,
        )  # fmt: skip

    def record(self) -> dict[str, Any]:
        return {
            "id": self.key_id, "user": self.user, "role": self.role, "created": self.created,
            "expires": self.expires, "models": list(self.models), "rpm": self.rpm,
            "tpm": self.tpm, "daily_usd": self.daily_usd, "last_used": self.last_used,
        }  # fmt: skip

    @classmethod
    def of(cls, data: dict[str, Any]) -> KeyInfo:
        return cls(
            str(data["id"]), str(data["user"]), str(data.get("role", "user")),
            float(data["created"]), number(data.get("expires")),
            tuple(data.get("models") or ()), data.get("rpm"), number(data.get("last_used")),
            number(data.get("daily_usd")), data.get("tpm"),
        )  # fmt: skip


def number(value: Any) -> float | None:
    return None if value is None else float(value)


MAX_MODELS = 64
MAX_RPM = 10_000_000
MAX_TPM = 10_000_000_000
MAX_DAILY_USD = 1_000_000


def check_scope(
    user: str,
    role: str,
    models: Sequence[str],
    rpm: int | None,
    daily_usd: float | None = None,
    tpm: int | None = None,
) -> None:
    """ValueError naming what to fix in a key's owner, role or scope."""
    if not user.strip() or len(user) > 200:
        raise ValueError("a key needs a user name (at most 200 characters)")
    check_role(role)
    if len(models) > MAX_MODELS or any(not m or len(m) > 200 for m in models):
        raise ValueError(f"models: at most {MAX_MODELS} names of 1 to 200 characters")
    if rpm is not None and not 1 <= rpm <= MAX_RPM:
        raise ValueError(f"rpm: 1 to {MAX_RPM:,}")
    if tpm is not None and not 1 <= tpm <= MAX_TPM:
        raise ValueError(f"tpm: 1 to {MAX_TPM:,}")
    if daily_usd is not None and not 0 <= daily_usd <= MAX_DAILY_USD:
        raise ValueError(f"daily_usd: 0 to {MAX_DAILY_USD:,} dollars")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose {' or '.join(ROLES)}")
    return role


SCOPE = ("expires", "models", "rpm", "tpm", "daily_usd")  # what `change` may set


def changed(old: KeyInfo, scope: dict[str, Any]) -> KeyInfo:
    """`old` with `scope`'s fields (SCOPE) set, checked (ValueError naming what to fix)."""
    unknown = sorted(set(scope) - set(SCOPE))
    if unknown:
        raise ValueError(f"{unknown[0]}: a key's scope is {', '.join(SCOPE)}")
    fields: dict[str, Any] = {k: tuple(v) if k == "models" else v for k, v in scope.items()}
    new = dataclasses.replace(old, **fields)
    check_scope(new.user, new.role, new.models, new.rpm, new.daily_usd, new.tpm)
    return new


def scope_of(data: dict[str, Any], config: Config, *, create: bool) -> dict[str, Any]:
    """A key's scope from the admin API's body or `router keys`' options, checked (RequestError
    naming the field): `expires` a duration from now ("30d"; null: never), `models` modes and
    models of the file ([] or null: any), `rpm` 1 to 10,000,000 and `tpm` 1 to 10,000,000,000
    (null: none), `daily_usd` 0 to 1,000,000 (null: none). With `create`, `user` and `role` too."""
    allowed = (*(("user", "role") if create else ()), *SCOPE)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0][:40]!r}: give {', '.join(allowed)}", param=unknown[0][:40]
        )
    out: dict[str, Any] = {}
    for name in ("user", "role"):
        if name in data and not isinstance(data[name], str):
            raise RequestError(f"{name}: a string", param=name)
        if name in data:
            out[name] = data[name]
    if create and "user" not in out:
        raise RequestError("user: who the key belongs to", param="user")
    if "expires" in data:
        value = data["expires"]
        if value is not None and not isinstance(value, str):
            raise RequestError(
                'expires: a duration such as "30d" or "12h", or null', param="expires"
            )
        out["expires"] = None if value is None else time.time() + duration(value, "expires")
    if "models" in data:
        out["models"] = scoped_models(data["models"] or [], config)
    for name, unit in (("rpm", "requests"), ("tpm", "tokens")):
        if name in data:
            value = data[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequestError(
                    f"{name}: a whole number of {unit} a minute, or null", param=name
                )
            out[name] = value
    if "daily_usd" in data:
        usd = data["daily_usd"]
        if usd is not None and (
            isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd)
        ):
            raise RequestError("daily_usd: dollars a day (5, 0.5), or null", param="daily_usd")
        out["daily_usd"] = None if usd is None else float(usd)
    try:
        check_scope(out.get("user", "x"), out.get("role", "user"), out.get("models", ()),
                    out.get("rpm"), out.get("daily_usd"), out.get("tpm"))  # fmt: skip
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return out


def scoped_models(names: Any, config: Config, name: str = "models") -> tuple[str, ...]:
    """The modes and models a key may ask for, each a mode or a model of the file."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError(
            f'{name}: a list of modes and models, such as ["auto", "local"]', param=name
        )
    known = [*ROUTING_MODES, *config.models]
    unknown = [n for n in names if n not in known]
    if unknown or len(names) > MAX_MODELS:
        shown = unknown[0][:80] if unknown else f"{len(names)} names"
        raise RequestError(
            f"{name} {shown!r}: give at most {MAX_MODELS} modes or models of this file (known: "
            f"{', '.join(known)})",
            param=name,
        )
    return tuple(dict.fromkeys(names))
