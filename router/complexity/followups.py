"""Scoring a conversation by what is asked now.

An estimator scores the text it is given. Given a whole conversation, it sees the earlier
turns and the model's answers as part of the ask: after one exchange, "What is my name?"
scored 0.43 instead of 0.008 with the shipped estimator, so every chat left the local tier
after its first turn. A conversation is scored here by its user turns, one at a time: the
last one as it is, each earlier one discounted by DECAY per turn back, and the highest wins.
A follow-up to a hard task ("Now do it in Rust") keeps most of the task's score; a trivial
question after small talk stays trivial however long the chat gets. The conversation's size
still counts where it matters: whether it fits a model's context (`router.engine.policy`).

Measured by `scripts/bench_followups.py` on MT-Bench's 80 two-turn questions and on
synthetic chats of everyday requests (CLINC150): see docs/benchmarks.md.
"""

from __future__ import annotations

from router.complexity import Estimator
from router.types import ChatRequest

DECAY = 0.8  # an earlier user turn counts this much per turn back
TURNS = 8  # the user turns looked at, latest first: scoring stays bounded on long chats


def user_turns(request: ChatRequest) -> list[ChatRequest]:
    """Each of the last TURNS user messages as a request of its own (system prompt kept),
    latest first. A request without user messages is its own only turn."""
    system = [m for m in request.messages if m["role"] in ("system", "developer")]
    users = [m for m in request.messages if m["role"] == "user"][-TURNS:]
    if len(users) <= 1 and len(request.messages) == len(system) + len(users):
        return [request]  # a single ask: nothing to separate
    return [request.with_messages([*system, m]) for m in reversed(users)] or [request]


def conversation_score(estimator: Estimator, request: ChatRequest) -> float:
    """The request's complexity: its latest ask, or an earlier one it follows up on."""
    best = 0.0
    for back, turn in enumerate(user_turns(request)):
        weight = DECAY**back
        if weight <= best:
            break  # no earlier turn can beat the best score so far
        best = max(best, weight * estimator.score(turn))
    return round(best, 4)
