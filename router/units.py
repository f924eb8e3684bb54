"""How amounts are written for people: one format for dollars everywhere."""

from __future__ import annotations

import math


def money(usd: float) -> str:
    """Dollars as the CLI, the errors and the reports show them: cents for a dollar or more,
    else two significant digits ($0.000054, $0.012), and $0 for nothing."""
    if usd == 0:
        return "$0"
    sign, usd = ("-" if usd < 0 else ""), abs(usd)
    if usd >= 1:
        return f"{sign}${usd:,.2f}"
    decimals = min(12, max(2, 1 - math.floor(math.log10(usd))))
    return f"{sign}${usd:.{decimals}f}"
