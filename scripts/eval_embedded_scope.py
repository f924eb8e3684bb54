"""What the embedded SmolLM2-135M is sent, on public prompts from ../shared/data: the share of
each set that routing keeps on it with its ceiling alone (max_score 0.25, as shipped before)
and with its ceiling and `categories = ["chit-chat"]` (as shipped now).

    python scripts/eval_embedded_scope.py [--data ../shared/data]

A 135M model greets, thanks and chats; asked "What is the capital of France?" it answers
nonsense. The complexity score measures how hard a task is for a capable model (a factual
question scores ~0.05, as low as "hello"), so a ceiling alone keeps nearly all everyday
questions on the smoke-test model and counts each nonsense answer as money saved.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.complexity import default_estimator  # noqa: E402
from router.governance.categories import classify  # noqa: E402
from router.types import ChatRequest  # noqa: E402

CEILING = 0.25


def sets(data: Path) -> dict[str, list[str]]:
    full = json.loads((data / "clinc150" / "data_full.json").read_text())
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    out: dict[str, list[str]] = {}
    for text, intent in full["test"]:
        if intent in domain_of:
            out.setdefault(f"clinc150 {domain_of[intent]}", []).append(text)
    vicuna = data / "vicuna-bench-questions" / "question.jsonl"
    out["vicuna-bench"] = [json.loads(line)["turns"][0] for line in vicuna.open()]
    arena = []
    for path in sorted(glob.glob(str(data / "arena-hard-questions" / "*" / "question.jsonl"))):
        for line in Path(path).read_text().splitlines():
            q = json.loads(line)
            turns = q.get("turns") or q.get("prompt")
            first = turns[0] if isinstance(turns, list) else turns
            arena.append(first["content"] if isinstance(first, dict) else str(first))
    out["arena-hard"] = arena
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    estimator = default_estimator()
    print(f"| set | prompts | kept local: ceiling {CEILING} | kept local: + chit-chat only |")
    print("| --- | --- | --- | --- |")
    for name, texts in sets(args.data).items():
        requests = [ChatRequest([{"role": "user", "content": t}]) for t in texts]
        low = [estimator.score(r) <= CEILING for r in requests]
        chat = [ok and classify(r) == "chit-chat" for ok, r in zip(low, requests, strict=True)]
        n = len(requests)
        print(f"| {name} | {n} | {sum(low) / n:.1%} | {sum(chat) / n:.1%} |")


if __name__ == "__main__":
    main()
