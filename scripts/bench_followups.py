"""How follow-up turns are scored: the whole conversation as one text vs. by what is asked now.

    python scripts/bench_followups.py [--data ../shared/data] [--ceiling 0.25]

Rows: MT-Bench's second turns (after GPT-4's reference answer where it exists, else after a
placeholder answer), with the first turn alone for reference; and synthetic chats of 1 to 10
everyday requests from CLINC150's small-talk and utility domains, each answered by a short
reply. "to cloud" is the share scored above the ceiling (the shipped local model's max_score).
A follow-up to a hard task should stay about as hard as the task; a trivial chat should stay
local however long it gets.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.complexity import default_estimator  # noqa: E402
from router.complexity.followups import conversation_score  # noqa: E402
from router.types import ChatRequest, Message  # noqa: E402

MT_BENCH = ROOT / "scripts" / "data" / "mt_bench"
REPLY = "Sure, here is a short answer to that. Let me know if you need anything else!"


def mt_bench() -> tuple[list[list[Message]], list[list[Message]], list[list[Message]]]:
    """(second turns after GPT-4's answer, second turns after a placeholder, first turns)."""
    questions = [json.loads(line) for line in (MT_BENCH / "question.jsonl").open()]
    answers = {
        (row := json.loads(line))["question_id"]: row["choices"][0]["turns"][0]
        for line in (MT_BENCH / "reference_answer_gpt-4.jsonl").open()
    }
    answered, placeholder, first = [], [], []
    for q in questions:
        one, two = q["turns"]
        first.append([{"role": "user", "content": one}])
        placeholder.append(
            [
                {"role": "user", "content": one},
                {"role": "assistant", "content": "(the answer)"},
                {"role": "user", "content": two},
            ]
        )
        if q["question_id"] in answers:
            answer = answers[q["question_id"]]
            answered.append(
                [
                    {"role": "user", "content": one},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": two},
                ]
            )
    return answered, placeholder, first


def everyday_chats(data: Path, turns: int, n: int = 300) -> list[list[Message]]:
    rows = json.loads((data / "clinc150" / "data_full.json").read_text())
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    trivial = set(domains["small_talk"]) | set(domains["utility"])
    utterances = [text for text, intent in rows["test"] if intent in trivial]
    rng = random.Random(turns)
    chats = []
    for _ in range(n):
        messages: list[Message] = []
        for _ in range(turns):
            messages.append({"role": "user", "content": rng.choice(utterances)})
            messages.append({"role": "assistant", "content": REPLY})
        chats.append(messages[:-1])
    return chats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--ceiling", type=float, default=0.25)
    args = parser.parse_args()
    estimator = default_estimator()
    scorers: dict[str, Callable[[ChatRequest], float]] = {
        "whole text": estimator.score,
        "what is asked now": lambda r: conversation_score(estimator, r),
    }
    answered, placeholder, first = mt_bench()
    sets = [
        ("MT-Bench turn 1 alone", first),
        ("MT-Bench turn 2, GPT-4 answer", answered),
        ("MT-Bench turn 2, placeholder", placeholder),
    ]
    if (args.data / "clinc150").is_dir():
        sets += [(f"everyday chat, {t} asks", everyday_chats(args.data, t)) for t in (1, 2, 5, 10)]
    else:
        print(f"(no {args.data / 'clinc150'}: everyday chats skipped; give --data)")
    print(
        f"{'set':32} {'n':>4}  "
        + "  ".join(f"{name + ': to cloud, median':>32}" for name in scorers)
    )
    for label, chats in sets:
        cells = []
        for fn in scorers.values():
            scores = [fn(ChatRequest(c)) for c in chats]
            share = sum(s > args.ceiling for s in scores) / len(scores)
            cells.append(f"{share:>23.0%}, {statistics.median(scores):.3f}")
        print(f"{label:32} {len(chats):>4}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
