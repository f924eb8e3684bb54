"""Estimator v1: the shipped weights, what a user notices about its scores, its speed."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.complexity import StructureEstimator, default_estimator
from router.complexity.structure import Weights
from router.types import ChatRequest
from tests.conftest import HARD_PROMPT

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"

GSM8K_LIKE = (
    "A bakery sells muffins for $3 each and cookies for $2 each. On Monday it sold 40 muffins "
    "and twice as many cookies as muffins. On Tuesday it sold half as many muffins as on Monday "
    "and 15 more cookies than on Monday. How much money did the bakery make from muffins and "
    "cookies on the two days together?"
)


def user(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


def test_default_estimator_is_v1_and_scores_are_deterministic_in_range() -> None:
    est = default_estimator()
    assert isinstance(est, StructureEstimator)
    prompts = ["", "Hi!", GSM8K_LIKE, HARD_PROMPT, "x" * 200_000, "数学の問題を解いてください"]
    first = [est.score(user(p)) for p in prompts]
    assert all(0.0 <= s <= 1.0 for s in first)
    assert first == [StructureEstimator().score(user(p)) for p in prompts]


def test_everyday_requests_stay_low_and_tasks_score_high() -> None:
    est = default_estimator()
    everyday = ["Hi!", "thanks!", "what time is it in tokyo", "set a timer for 10 minutes"]
    tasks = [GSM8K_LIKE, HARD_PROMPT]
    low = [est.score(user(p)) for p in everyday]
    high = [est.score(user(p)) for p in tasks]
    assert max(low) < 0.2 < 0.5 < min(high), (low, high)
    assert est.score(user("Hello, how are you?")) <= 0.1  # small talk is capped


def test_system_prompt_does_not_make_every_request_look_hard() -> None:
    est = default_estimator()
    question = "What's the capital of France?"
    system = "You are ACME's assistant. Explain your reasoning and follow the style guide. " * 40
    with_system = ChatRequest(
        [{"role": "system", "content": system}, {"role": "user", "content": question}]
    )
    assert est.score(with_system) == est.score(user(question))


def test_whole_conversation_counts_not_only_the_last_message() -> None:
    est = default_estimator()
    follow_up = "And how would that change if the list were sorted?"
    history = ChatRequest(
        [
            {"role": "user", "content": HARD_PROMPT},
            {
                "role": "assistant",
                "content": "xs.count(x) scans the whole list for every x: "
                "O(n^2). A Counter makes it O(n); sorting then scanning neighbours is O(n log n).",
            },
            {"role": "user", "content": follow_up},
        ]
    )
    assert est.score(history) > est.score(user(follow_up)) + 0.2


def test_explain_names_each_signal_strongest_first() -> None:
    parts = default_estimator().explain(user(HARD_PROMPT))
    names = list(parts)
    assert names[0] == "intent"  # code block and reasoning verbs
    assert set(names) == {
        "length",
        "vocabulary_reuse",
        "repeated_terms",
        "compressibility",
        "intent",
    }
    assert [abs(v) for v in parts.values()] == sorted(
        (abs(v) for v in parts.values()), reverse=True
    )


def test_p50_under_one_millisecond_per_prompt() -> None:
    est = default_estimator()
    requests = [user(p) for p in ["Hi!", GSM8K_LIKE, HARD_PROMPT, "word " * 5_000] * 25]
    times = []
    for r in requests:
        t0 = time.perf_counter()
        est.score(r)
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.001


def test_a_broken_weights_file_says_what_is_wrong() -> None:
    good = json.loads(
        (ROOT / "router" / "complexity" / "structure_v1.json").read_text(encoding="utf-8")
    )
    with pytest.raises(ValueError, match="lack intent"):
        Weights.from_json({**good, "weight": {k: 1 for k in good["weight"] if k != "intent"}})
    with pytest.raises(ValueError, match="ascending"):
        Weights.from_json({**good, "quantiles": [1.0, 0.0]})


@pytest.mark.slow  # trains on 28,000 prompts in a subprocess (~20 s)
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data beside the checkout")
def test_shipped_weights_rebuild_exactly_and_beat_baselines_on_held_out_sources() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_estimator.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr  # the file is what the script builds
    header = next(line for line in out.stdout.splitlines() if line.startswith("held out"))
    columns = re.split(r"\s{2,}", header.strip())[1:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == len(columns) + 1 and re.fullmatch(r"[\d.]+", cells[-1]):
            rows[cells[0]] = dict(zip(columns, map(float, cells[1:]), strict=True))
    v1 = rows["router v1 (shipped: fixed weights)"]
    for peer in ("prompt length", "v0 heuristic", "v1 signals, fitted weights"):
        assert v1["mean, folds"] > rows[peer]["mean, folds"] + 0.02, peer
        assert v1["mean, pooled"] > rows[peer]["mean, pooled"] + 0.02, peer
    assert v1["mean, pooled"] >= 0.60  # the target, on the pooled protocol
    assert v1["AUROC"] >= 0.97
