"""Accuracy of the task-category classifier on public prompts from ../shared/data.

    python scripts/eval_categories.py [--data ../shared/data] [--confusion]

Labels come from each set's own annotations, mapped to router categories:
CLINC150 (test split): small_talk → chit-chat, translate → translate, calculator →
math/reasoning, meta → other, every other intent → question-answering (asks for information
or a simple action). Arena-Hard v2.0: coding → code, math → math/reasoning, creative_writing →
writing. Vicuna-bench: writing/roleplay → writing, coding → code, math/fermi →
math/reasoning, the rest → question-answering.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.governance.categories import classify  # noqa: E402
from router.types import ChatRequest  # noqa: E402


def clinc(data: Path) -> list[tuple[str, str]]:
    full = json.loads((data / "clinc150" / "data_full.json").read_text())
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    out = []
    for text, intent in full["test"]:
        domain = domain_of[intent]
        label = (
            "chit-chat"
            if domain == "small_talk"
            else "translate"
            if intent == "translate"
            else "math/reasoning"
            if intent == "calculator"
            else "other"
            if domain == "meta"
            else "question-answering"
        )
        out.append((text, label))
    return out


def arena(data: Path) -> list[tuple[str, str]]:
    rows = [
        json.loads(line)
        for line in (data / "arena-hard-questions" / "arena-hard-v2.0" / "question.jsonl").open()
    ]
    mapping = {"coding": "code", "math": "math/reasoning"}
    return [
        (
            r["prompt"],
            "writing" if r["category"] == "creative_writing" else mapping[r["subcategory"]],
        )
        for r in rows
    ]


def vicuna(data: Path) -> list[tuple[str, str]]:
    rows = [
        json.loads(line) for line in (data / "vicuna-bench-questions" / "question.jsonl").open()
    ]
    mapping = {
        "writing": "writing",
        "roleplay": "writing",
        "coding": "code",
        "math": "math/reasoning",
        "fermi": "math/reasoning",
    }
    return [(r["turns"][0], mapping.get(r["category"], "question-answering")) for r in rows]


def accuracy(pairs: list[tuple[str, str]]) -> tuple[float, collections.Counter[tuple[str, str]]]:
    confusion: collections.Counter[tuple[str, str]] = collections.Counter()
    for text, label in pairs:
        got = classify(ChatRequest([{"role": "user", "content": text}]))
        confusion[(label, got)] += 1
    right = sum(n for (label, got), n in confusion.items() if label == got)
    return right / len(pairs), confusion


SETS = {"CLINC150 test": clinc, "Arena-Hard v2.0": arena, "Vicuna-bench": vicuna}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--confusion", action="store_true")
    args = ap.parse_args()
    print(f"{'set':<16} | {'prompts':>7} | {'accuracy':>8}")
    print("-" * 38)
    for name, load in SETS.items():
        pairs = load(args.data)
        acc, confusion = accuracy(pairs)
        print(f"{name:<16} | {len(pairs):>7} | {acc:>8.1%}")
        if args.confusion:
            for (label, got), n in confusion.most_common():
                if label != got:
                    print(f"    {label:>18} → {got:<18} {n}")


if __name__ == "__main__":
    main()
