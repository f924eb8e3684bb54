"""Amounts: how dollars are written for people (one format everywhere), and what an answer's
usage says it read and wrote (`Tokens`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class Tokens:
    """What an answer's usage says it read and wrote. `prompt` is every input token, the
    provider's cache reads (`cache_read`) and writes (`cache_write`, of which `cache_write_1h`
    at the one-hour rate) included, as LiteLLM counts them."""

    prompt: int = 0
    completion: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0

    @property
    def fresh(self) -> int:
        """Input read at the full input price."""
        return max(0, self.prompt - self.cache_read - self.cache_write)

    @classmethod
    def of(cls, usage: Mapping[str, Any]) -> Tokens:
        """An answer's usage in chat's shape, as OpenAI and LiteLLM write it: cache reads in
        `prompt_tokens_details.cached_tokens` (or Anthropic's `cache_read_input_tokens`),
        writes in `cache_creation_input_tokens` (or the details' `cache_creation_tokens`)."""
        details = usage.get("prompt_tokens_details") or {}
        if not details and not (_CACHE_KEYS & usage.keys()):  # most answers: no cache in play
            return cls(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
        if not isinstance(details, Mapping):
            details = {}
        read = _count(details.get("cached_tokens")) or _count(usage.get("cache_read_input_tokens"))
        write = _count(usage.get("cache_creation_input_tokens")) or _count(
            details.get("cache_creation_tokens")
        )
        split = details.get("cache_creation_token_details") or {}
        hour = _count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, Mapping) else 0
        prompt = _count(usage.get("prompt_tokens"))
        return cls(
            prompt=prompt,
            completion=_count(usage.get("completion_tokens")),
            cache_read=min(read, prompt),
            cache_write=min(write, prompt - min(read, prompt)),
            cache_write_1h=min(hour, write),
        )

    def usage(self) -> dict[str, Any]:
        """As chat's usage: the totals, and the cache's share in `prompt_tokens_details`."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }
        if self.cache_read or self.cache_write:
            details: dict[str, Any] = {
                "cached_tokens": self.cache_read,
                "cache_creation_tokens": self.cache_write,
            }
            if self.cache_write_1h:
                details["cache_creation_token_details"] = {
                    "ephemeral_5m_input_tokens": self.cache_write - self.cache_write_1h,
                    "ephemeral_1h_input_tokens": self.cache_write_1h,
                }
            out["prompt_tokens_details"] = details
        return out


_CACHE_KEYS = frozenset({"cache_read_input_tokens", "cache_creation_input_tokens"})


def _count(value: Any) -> int:
    """A token count from a provider's usage: a non-negative whole number, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))
