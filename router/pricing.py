"""Token prices: models.toml overrides, else LiteLLM's offline cost map, read without importing
litellm (the JSON file ships inside the litellm package)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from router.config import FREE, CloudModel, Config, LocalModel, Price, package_file
from router.errors import ConfigError
from router.types import SAVED_BY, Routing

_COST_MAP_FILE = "model_prices_and_context_window_backup.json"


@lru_cache(maxsize=1)
def cost_map() -> dict[str, Any]:
    path = package_file("litellm", _COST_MAP_FILE)
    if path is None:
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def lookup(model_id: str) -> Price | None:
    """Price of a LiteLLM model id ("openai/gpt-4o-mini" or "gpt-4o-mini"), if the map has it."""
    table = cost_map()
    candidates = [model_id]
    if "/" in model_id:
        candidates.append(model_id.split("/", 1)[1])
    for key in candidates:
        entry = table.get(key)
        if entry and "input_cost_per_token" in entry and "output_cost_per_token" in entry:
            return Price(
                input_per_mtok=float(entry["input_cost_per_token"]) * 1e6,
                output_per_mtok=float(entry["output_cost_per_token"]) * 1e6,
            )
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
    """Fill a routing's tokens, cost, baseline cost and savings from a response's usage."""
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    routing.prompt_tokens, routing.completion_tokens = prompt, completion
    routing.baseline_usd = baseline.cost(prompt, completion)
    routing.cost_usd = 0.0 if routing.cache_hit else price.cost(prompt, completion)
    # Tokens that never reached a paid provider: local answers and cache hits.
    sent_to_cloud = routing.tier == "cloud" and not routing.cache_hit
    routing.tokens_saved = 0 if sent_to_cloud else prompt + completion
    routing.usd_saved = routing.baseline_usd - routing.cost_usd
    if routing.cache_hit:
        routing.saved_by = "cache"
    elif sent_to_cloud:
        routing.saved_by = "cloud"
    elif routing.saved_by not in SAVED_BY:
        routing.saved_by = "routed"  # a local answer nothing else marked
