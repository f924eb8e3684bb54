"""Complexity estimation: a function from a chat request to a score in [0, 1].

The score estimates how likely the request needs a strong (cloud) model. The policy compares it
with each model's `max_score` ceiling. Any object with `score(request) -> float` is an Estimator.
"""

from __future__ import annotations

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


__all__ = [
    "Estimator",
    "HeuristicEstimator",
    "StructureEstimator",
    "default_estimator",
    "estimator_name",
]
