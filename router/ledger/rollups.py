"""Sums over the ledger in SQL: what `router stats`, `audit`, `quality` and the dashboard read.

A window of a year on a ledger of a million rows must cost the database a scan and the router
a few rows, never a Python object per request. `select()` builds one GROUP BY over the rows
since a time (of one user only, for a user's key) with the sums asked for, and optionally
counts of rows scored at or under given ceilings; `select_days()` sums each account's tokens
per day for the audit's spike flag. The SQLite and PostgreSQL ledgers run the same SQL; a
`Dialect` names the few differences.

Keys: "user" (None reads "(anonymous)"), "tier", "model", "category", "estimator",
"cache_hit" (0/1), "score_tenth" (0..9: the score's first decimal), "day" (the local calendar
day) and `slot(step)` (the start of the `step`-second bucket, for charts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from router.types import SAVED_BY

ANONYMOUS = "(anonymous)"
NO_TEAM = "(no team)"


@dataclass(frozen=True)
class Dialect:
    placeholder: str
    day: str  # the local calendar day of `ts`, YYYY-MM-DD
    floor: str  # "{}" → the integer floor of a non-negative number
    finished: str  # a row that is not a pending call's (router.ledger.Entry.pending)


SQLITE = Dialect("?", "date(ts, 'unixepoch', 'localtime')", "CAST({} AS INTEGER)", "pending = 0")
POSTGRES = Dialect(
    "%s", "to_char(to_timestamp(ts), 'YYYY-MM-DD')", "CAST(FLOOR({}) AS BIGINT)", "NOT pending"
)


def slot(step: int) -> str:
    """The key of `step`-second buckets (their start, Unix time)."""
    return f"slot:{int(step)}"


def _count(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


_LOCAL = "tier = 'local'"
_RATED = "rating IN ('good', 'bad')"
_JUDGED = "verdict IN ('acceptable', 'unacceptable')"
# The figures a group can have. "assessed" is a local answer with a person's rating or a
# judge's verdict; "acceptable" takes the rating when there is one (governance.quality).
SUMS = {
    "requests": "COUNT(*)",
    "tokens": "SUM(prompt_tokens + completion_tokens)",
    "cost_usd": "SUM(cost_usd)",
    "baseline_usd": "SUM(baseline_usd)",
    "tokens_saved": "SUM(tokens_saved)",
    "usd_saved": "SUM(usd_saved)",
    "cache_hits": _count("cache_hit"),
    "cache_read_tokens": "SUM(cache_read_tokens)",
    "cache_write_tokens": "SUM(cache_write_tokens)",
    "prompt_cached_tokens": "SUM(prompt_cached_tokens)",
    "refusals": _count("refusal <> ''"),
    # What was paid for: cloud tokens that were not a cache hit, and their dollars.
    "paid_tokens": "SUM(CASE WHEN tier = 'cloud' AND NOT cache_hit THEN "
    "prompt_tokens + completion_tokens ELSE 0 END)",
    "local_tokens": f"SUM(CASE WHEN {_LOCAL} THEN prompt_tokens + completion_tokens ELSE 0 END)",
    "low_value": _count("flags <> ''"),
    "rated_good": _count("rating = 'good'"),
    "rated_bad": _count("rating = 'bad'"),
    "verdict_ok": _count("verdict = 'acceptable'"),
    "verdict_bad": _count("verdict = 'unacceptable'"),
    "judge_failures": _count("judge <> '' AND verdict = ''"),
    "shadow_usd": "SUM(shadow_usd)",
    "assessed": _count(f"{_LOCAL} AND ({_RATED} OR {_JUDGED})"),
    "acceptable": _count(
        f"{_LOCAL} AND (rating = 'good' OR (NOT {_RATED} AND verdict = 'acceptable'))"
    ),
    "assessed_rated": _count(f"{_LOCAL} AND {_RATED}"),
    "assessed_judged": _count(f"{_LOCAL} AND {_JUDGED}"),
    "last_ts": "MAX(ts)",
    "last_id": "MAX(id)",
}
MONEY = ("requests", "tokens", "cost_usd", "baseline_usd", "tokens_saved", "usd_saved")
QUALITY = (
    "requests",
    "rated_good",
    "rated_bad",
    "verdict_ok",
    "verdict_bad",
    "judge_failures",
    "shadow_usd",
    "assessed",
    "acceptable",
    "assessed_rated",
    "assessed_judged",
)
UNDER = ("under", "judged_under", "good_under")


def _key(dialect: Dialect, key: str) -> str:
    tenth = dialect.floor.format("score * 10")
    fixed = {
        "user": f"COALESCE(\"user\", '{ANONYMOUS}')",
        "team": f"COALESCE(members.team, '{NO_TEAM}')",
        "tier": "tier",
        "model": "model",
        "category": "category",
        "estimator": "estimator",
        "api": "api",
        "saved_by": "saved_by",
        "session": "session",
        "refusal": "refusal",
        "cache_hit": "CASE WHEN cache_hit THEN 1 ELSE 0 END",
        "score_tenth": f"CASE WHEN score >= 0.9 THEN 9 ELSE {tenth} END",
        "day": dialect.day,
    }
    if key in fixed:
        return fixed[key]
    name, _, value = key.partition(":")
    if name == "slot":
        step = int(value)
        return f"{dialect.floor.format(f'ts / {step}')} * {step}"
    raise ValueError(f"no rollup key {key!r}")


def _source(
    dialect: Dialect,
    since: float,
    user: str | None,
    teams: Mapping[str, Sequence[str]] | None,
    scan: bool,
) -> tuple[str, str, list[Any]]:
    """(WITH clause, FROM ... WHERE ..., arguments) for the rows since `since`, of `user`
    only when given, joined to the team memberships `teams` (user → teams) when given.
    `scan`: read the table through rather than through the ts index (a window covering most
    of the ledger: a scan is ten times faster than a million index lookups)."""
    p = dialect.placeholder
    with_, args = "", list[Any]()
    source = "requests"
    if teams is not None:
        with_, args = _members(dialect, teams)
        source = 'requests LEFT JOIN members ON members.member = requests."user"'
    # Answers only: a pending row is a call still under way, or one the router did not see end.
    where = f"{'+' if scan else ''}ts >= {p} AND {dialect.finished}"
    args.append(float(since))
    if user is not None:
        where += f' AND "user" = {p}'
        args.append(user)
    return with_, f"FROM {source} WHERE {where}", args


def _members(dialect: Dialect, teams: Mapping[str, Sequence[str]]) -> tuple[str, list[Any]]:
    """(WITH clause, arguments): the table `members` (member, team) of `teams`."""
    p = dialect.placeholder
    pairs = [(u, t) for u, ts in sorted(teams.items()) for t in ts]
    values = ", ".join(f"({p}, {p})" for _ in pairs)
    members = f"VALUES {values}" if pairs else "SELECT NULL, NULL WHERE 1 = 0"
    return f"WITH members (member, team) AS ({members}) ", [v for pair in pairs for v in pair]


def select(
    dialect: Dialect,
    since: float,
    keys: Sequence[str] = (),
    *,
    sums: Sequence[str] = tuple(SUMS),
    user: str | None = None,
    ceilings: Sequence[float] = (),
    teams: Mapping[str, Sequence[str]] | None = None,
    scan: bool = False,
) -> tuple[str, list[Any]]:
    """The SQL and its arguments: per group of `keys`, the `sums` and, for each ceiling c
    (index i), `under_i` (rows scored ≤ c), `judged_under_i` and `good_under_i` (of those,
    with a judge's verdict, and an acceptable one). "team" as a key needs `teams`."""
    columns = [f"{_key(dialect, k)} AS k{i}" for i, k in enumerate(keys)]
    for name in ("requests", *(s for s in sums if s != "requests")):
        sql = SUMS[name]
        columns.append(sql if sql.startswith("MAX") else f"COALESCE({sql}, 0)")
    for ceiling in ceilings:
        under = f"score <= {float(ceiling)!r}"
        good = f"{under} AND verdict = 'acceptable'"
        columns += [
            f"COALESCE({_count(under)}, 0)",
            f"COALESCE({_count(f'{under} AND {_JUDGED}')}, 0)",
            f"COALESCE({_count(good)}, 0)",
        ]
    with_, source, args = _source(dialect, since, user, teams, scan)
    sql = f"{with_}SELECT {', '.join(columns)} {source}"
    if keys:
        names = ", ".join(f"k{i}" for i in range(len(keys)))
        sql += f" GROUP BY {names} ORDER BY {names}"
    return sql, args


def rows(
    keys: Sequence[str], sums: Sequence[str], ceilings: Sequence[float], found: list[Any]
) -> list[dict[str, Any]]:
    """`select`'s result as dicts keyed by the keys as given and the figures' names; a
    window with no rows gives none (also without keys)."""
    columns = [*keys, "requests", *(s for s in sums if s != "requests")]
    columns += [f"{k}_{i}" for i in range(len(ceilings)) for k in UNDER]
    out = []
    for raw in found:
        row = dict(zip(columns, (_plain(v) for v in raw), strict=True))
        if row["requests"]:
            out.append(row)
    return out


DAY_COLUMNS = ("account", "today", "earlier", "span", "active")


def select_days(
    dialect: Dialect,
    since: float,
    end: float,
    account: str,
    *,
    user: str | None = None,
    teams: Mapping[str, Sequence[str]] | None = None,
    scan: bool = False,
) -> tuple[str, list[Any]]:
    """Per account ("user", or "team" with `teams`), from its paid tokens (cloud answers, not
    cache hits: what costs money) per whole day before `end` (day 0: the last 24 hours):
    `today`'s, the `earlier` days', the oldest day (`span`) and how many earlier days had
    any (`active`)."""
    day = dialect.floor.format(f"({float(end)!r} - ts) / 86400.0")
    if account == "team" and teams is not None:
        # Each user's days first, then their teams': joining every row to the memberships
        # (a table SQLite cannot index) cost 1.4 s at 100,000 rows (bench_alert_audit.py).
        with_, source, args = _source(dialect, since, user, None, scan)
        with_, members = _members(dialect, teams)
        # ("user" || '': grouped in a temp B-tree, as by COALESCE for the users' days: through
        # the (user, ts) index the rows are read in random order, three times slower.)
        per_user = (
            f"SELECT \"user\" || '' AS u, {day} AS d, {SUMS['paid_tokens']} AS t {source} "
            "GROUP BY u, d"
        )
        per_day = (
            f"SELECT {_key(dialect, 'team')} AS k0, d, SUM(t) AS t FROM ({per_user}) AS per_user "
            "LEFT JOIN members ON members.member = per_user.u GROUP BY k0, d"
        )
        args = members + args
    else:
        with_, source, args = _source(dialect, since, user, teams, scan)
        per_day = (
            f"SELECT {_key(dialect, account)} AS k0, {day} AS d, "
            f"{SUMS['paid_tokens']} AS t {source} GROUP BY k0, d"
        )
    sql = (
        f"{with_}SELECT k0, COALESCE(SUM(CASE WHEN d = 0 THEN t ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN d >= 1 THEN t ELSE 0 END), 0), MAX(d), "
        "COALESCE(SUM(CASE WHEN d >= 1 AND t > 0 THEN 1 ELSE 0 END), 0) "
        f"FROM ({per_day}) AS per_day GROUP BY k0 ORDER BY k0"
    )
    return sql, args


def day_rows(found: list[Any]) -> dict[str, dict[str, int]]:
    """`select_days`'s result, by account."""
    out = {}
    for raw in found:
        row = dict(zip(DAY_COLUMNS, (_plain(v) for v in raw), strict=True))
        out[str(row.pop("account"))] = row
    return out


def _plain(value: Any) -> Any:
    """PostgreSQL's SUM of integers is a Decimal: back to int or float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def total(found: list[dict[str, Any]], name: str) -> Any:
    """The sum of one figure over rollup rows."""
    return sum(r[name] for r in found)


SUMMARY_COLUMNS = (
    "group",
    "requests",
    "tokens",
    "cost_usd",
    "baseline_usd",
    "tokens_saved",
    "usd_saved",
    "cache_hits",
    "cache_read_tokens",
    "cache_write_tokens",
    "prompt_cached_tokens",
    "refusals",
)
GROUPS = ("day", "user", "tier", "model", "category", "api", "saved_by", "session")  # `stats --by`


def where_equal(equal: Mapping[str, str | None], placeholder: str) -> tuple[str, list[str]]:
    """A WHERE clause for the columns given a value (None: any), and its arguments."""
    given = {k: v for k, v in equal.items() if v is not None}
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f'"{k}" = {placeholder}' for k in given), list(given.values())


def summary_of(
    ledger: Any, since: float | None, by: str | None, user: str | None = None
) -> list[dict[str, Any]]:
    """A ledger's `summary`, from its `rollup`: SUMMARY_COLUMNS per group."""
    if by is not None and by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
    keys = [by] if by else []
    found = ledger.rollup(since or 0.0, keys, sums=SUMMARY_COLUMNS[1:], user=user)
    return [
        {"group": r[by] if by else "all", **{c: r[c] for c in SUMMARY_COLUMNS[1:]}} for r in found
    ]


def totals_of(ledger: Any, since: float | None, user: str | None = None) -> dict[str, Any]:
    """A ledger's `totals`, from its `summary`: one row of sums and the requests per tier."""
    rows = ledger.summary(since, user=user)
    total = rows[0] if rows else dict.fromkeys(SUMMARY_COLUMNS, 0)
    total.pop("group")
    by_tier = {r["group"]: r["requests"] for r in ledger.summary(since, "tier", user=user)}
    saved = {r["group"]: r for r in ledger.summary(since, "saved_by", user=user)}
    saved_by = {
        why: {k: saved.get(why, {}).get(k, 0) for k in ("requests", "tokens_saved", "usd_saved")}
        for why in (*SAVED_BY, *sorted(set(saved) - set(SAVED_BY)))
    }
    return {**total, "by_tier": by_tier, "saved_by": saved_by}
