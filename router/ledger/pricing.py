"""Token prices: models.toml overrides, else LiteLLM's offline cost map, read without importing
litellm (the JSON file ships inside the litellm package)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from router.config import FREE, CloudModel, Config, LocalModel, Price, package_file
from router.errors import ConfigError
from router.types import SAVED_BY, Routing
from router.units import Tokens

_COST_MAP_FILE = "model_prices_and_context_window_backup.json"


@lru_cache(maxsize=1)
def cost_map() -> dict[str, Any]:
    path = package_file("litellm", _COST_MAP_FILE)
    if path is None:
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


_THRESHOLD = re.compile(r"^input_cost_per_token_above_(\d+)(k?)_tokens$")


def _per_mtok(entry: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = entry.get(key)
    return float(value) * 1e6 if isinstance(value, int | float) else default


def _price(entry: Mapping[str, Any]) -> Price:
    """A cost-map entry's prices, read with LiteLLM's own rules (litellm_core_utils/
    llm_cost_calc/utils.py: generic_cost_per_token): cache reads and writes at their own
    rates, one-hour cache writes at theirs, and above a prompt size (`*_above_200k_tokens`)
    the tier's rates, each falling back to the base rate where the tier has none."""
    base = {
        "input_per_mtok": float(entry["input_cost_per_token"]) * 1e6,
        "output_per_mtok": float(entry["output_cost_per_token"]) * 1e6,
        "cache_read_per_mtok": _per_mtok(entry, "cache_read_input_token_cost", None),
        "cache_write_per_mtok": _per_mtok(entry, "cache_creation_input_token_cost", None),
        "cache_write_1h_per_mtok": _per_mtok(
            entry, "cache_creation_input_token_cost_above_1hr", None
        ),
    }
    tiers = []
    for key in entry:
        found = _THRESHOLD.match(key)
        if not found or not isinstance(entry[key], int | float):
            continue
        suffix = f"above_{found.group(1)}{found.group(2)}_tokens"
        tiers.append(
            Price(
                input_per_mtok=float(entry[key]) * 1e6,
                output_per_mtok=_per_mtok(entry, f"output_cost_per_token_{suffix}", None)
                or float(base["output_per_mtok"] or 0),
                cache_read_per_mtok=_per_mtok(
                    entry, f"cache_read_input_token_cost_{suffix}", base["cache_read_per_mtok"]
                ),
                cache_write_per_mtok=_per_mtok(
                    entry,
                    f"cache_creation_input_token_cost_{suffix}",
                    base["cache_write_per_mtok"],
                ),
                cache_write_1h_per_mtok=_per_mtok(
                    entry,
                    f"cache_creation_input_token_cost_above_1hr_{suffix}",
                    base["cache_write_1h_per_mtok"],
                ),
                above_tokens=int(found.group(1)) * (1000 if found.group(2) else 1),
            )
        )
    return Price(**base, tiers=tuple(tiers))  # type: ignore[arg-type]


def lookup(model_id: str) -> Price | None:
    """Price of a LiteLLM model id ("openai/gpt-4o-mini" or "gpt-4o-mini"), if the map has it."""
    table = cost_map()
    candidates = [model_id]
    if "/" in model_id:
        candidates.append(model_id.split("/", 1)[1])
    for key in candidates:
        entry = table.get(key)
        if entry and "input_cost_per_token" in entry and "output_cost_per_token" in entry:
            return _price(entry)
    return None


def context_window(model_id: str) -> int | None:
    table = cost_map()
    for key in (model_id, model_id.split("/", 1)[-1]):
        entry = table.get(key)
        if entry and isinstance(entry.get("max_input_tokens"), int):
            return int(entry["max_input_tokens"])
    return None


def output_limit(model_id: str) -> int | None:
    """The most tokens one answer of `model_id` may have, from LiteLLM's cost map."""
    table = cost_map()
    for key in (model_id, model_id.split("/", 1)[-1]):
        entry = table.get(key)
        if entry and isinstance(entry.get("max_output_tokens"), int):
            return int(entry["max_output_tokens"])
    return None


def model_price(name: str, model: LocalModel | CloudModel) -> Price:
    if model.price is not None:
        return model.price
    if isinstance(model, LocalModel):
        return FREE
    found = lookup(model.litellm_model)
    if found is None:
        raise ConfigError(
            f"models.{name}: no price for {model.litellm_model!r} in LiteLLM's cost map; "
            "add price = { input_per_mtok = ..., output_per_mtok = ... }"
        )
    return found


def baseline_price(config: Config) -> Price:
    if config.router.baseline_price is not None:
        return config.router.baseline_price
    found = lookup(config.router.baseline)
    if found is None:
        raise ConfigError(
            f"router.baseline: no price for {config.router.baseline!r} in LiteLLM's cost map; "
            "set router.baseline_price = { input_per_mtok = ..., output_per_mtok = ... }"
        )
    return found


def price_table(config: Config) -> dict[str, Price]:
    """Every enabled model's price, resolved once; raises ConfigError for an unpriced model."""
    return {name: model_price(name, m) for name, m in config.enabled().items()}


def account(routing: Routing, usage: Mapping[str, Any], price: Price, baseline: Price) -> None:
    """Fill a routing's tokens, cost, baseline cost and savings from a response's usage. The
    cost is what the provider charges for these tokens (its prompt-cache reads and writes at
    their own rates, LiteLLM's rules); the baseline, what the baseline model would have charged
    for the same fresh and cached tokens."""
    tokens = Tokens.of(usage)
    if routing.tier == "local":  # its cached tokens are its own KV cache's: not priced apart
        routing.prompt_cached_tokens = 0 if routing.cache_hit else tokens.cache_read
        tokens = Tokens(tokens.prompt, tokens.completion)
    prompt, completion = tokens.prompt, tokens.completion
    routing.prompt_tokens, routing.completion_tokens = prompt, completion
    if not routing.cache_hit:  # a hit read nothing from a provider's prompt cache
        routing.cache_read_tokens, routing.cache_write_tokens = (
            tokens.cache_read,
            tokens.cache_write,
        )
    routing.baseline_usd = baseline.cost_of(tokens)
    routing.cost_usd = 0.0 if routing.cache_hit else price.cost_of(tokens)
    # Tokens that never reached a paid provider: local answers and cache hits. A looping
    # answer the guard stopped saved nothing: it was no answer.
    sent_to_cloud = routing.tier == "cloud" and not routing.cache_hit
    looped = routing.saved_by == "looped" and not routing.cache_hit
    routing.tokens_saved = 0 if sent_to_cloud or looped else prompt + completion
    routing.usd_saved = 0.0 if looped else routing.baseline_usd - routing.cost_usd
    if routing.cache_hit:
        routing.saved_by = "cache"
    elif looped:
        pass
    elif sent_to_cloud:
        routing.saved_by = "cloud"
    elif routing.saved_by not in SAVED_BY:
        routing.saved_by = "routed"  # a local answer nothing else marked
