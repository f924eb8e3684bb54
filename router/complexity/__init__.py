"""Complexity estimation: a function from a chat request to a score in [0, 1].

The score estimates how likely the request needs a strong (cloud) model. The policy compares it
with each model's `max_score` ceiling. Any object with `score(request) -> float` is an Estimator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from router.complexity.heuristic import HeuristicEstimator
from router.complexity.structure import StructureEstimator
from router.types import ChatRequest


class Estimator(Protocol):
    def score(self, request: ChatRequest) -> float: ...


def estimator_name(estimator: Estimator) -> str:
    """What the ledger records next to each score, so thresholds are calibrated on scores of
    the estimator in use: its `name` attribute, else its class name."""
    return str(getattr(estimator, "name", type(estimator).__name__))


def default_estimator() -> Estimator:
    return StructureEstimator()


def load_estimator(path: Path | None) -> Estimator:
    """The estimator in file `path` (`router learn` wrote it), or the shipped one for None;
    ConfigError saying what is wrong with the file."""
    if path is None:
        return default_estimator()
    from router.complexity.learned import load
    from router.errors import ConfigError

    try:
        return load(path)
    except ValueError as exc:
        raise ConfigError(
            f"estimator {exc}: run `router learn` to write one, or remove [router] estimator "
            "to use the shipped estimator"
        ) from None


__all__ = [
    "Estimator",
    "HeuristicEstimator",
    "StructureEstimator",
    "default_estimator",
    "estimator_name",
    "load_estimator",
]
