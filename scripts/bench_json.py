"""Structured output from the in-process GGUF model: how often the answer is valid JSON and
matches the requested schema, with llama.cpp's grammar (response_format) and without it.

    python scripts/bench_json.py [--max-tokens 200] [--model smollm2]

Each prompt asks for a JSON object of a given shape (20 schemas: flat, nested, arrays, enums,
numbers). "grammar" sends `response_format: json_schema` (the router turns it into a llama.cpp
grammar); "prompt only" asks in words. Greedy decoding (temperature 0), so one run is exact.
"""

# ruff: noqa: E501  (the table of cases reads best one case per line)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402

from router import Router  # noqa: E402

S = "string"
CASES: list[tuple[str, dict[str, Any]]] = [
    ("A person named Ana, aged 31.", {"name": S, "age": "integer"}),
    ("The capital of France.", {"country": S, "capital": S}),
    ("A book: title and year.", {"title": S, "year": "integer"}),
    ("Today's weather in Oslo: cold, 2 degrees.", {"city": S, "summary": S, "celsius": "number"}),
    ("Three fruits.", {"fruits": {"type": "array", "items": {"type": S}}}),
    ("Is water wet? Answer yes or no with a reason.", {"answer": {"enum": ["yes", "no"]}, "reason": S}),
    ("A product: name, price in dollars, in stock or not.", {"name": S, "price": "number", "in_stock": "boolean"}),
    ("A meeting at 10:00 with two attendees.", {"time": S, "attendees": {"type": "array", "items": {"type": S}}}),
    ("Sentiment of 'I love this phone'.", {"sentiment": {"enum": ["positive", "negative", "neutral"]}}),
    ("An address in Paris.", {"street": S, "city": S, "postcode": S}),
    ("A recipe name and its number of steps.", {"recipe": S, "steps": "integer"}),
    ("A colour and its hex code.", {"colour": S, "hex": S}),
    ("The sum of 2 and 3.", {"a": "integer", "b": "integer", "sum": "integer"}),
    ("A user with an id and an email.", {"id": "integer", "email": S}),
    ("A movie with its director.", {"movie": S, "director": {"type": "object", "properties": {"name": {"type": S}}, "required": ["name"]}}),
    ("Two cities and their countries.", {"cities": {"type": "array", "items": {"type": "object", "properties": {"city": {"type": S}, "country": {"type": S}}, "required": ["city", "country"]}}}),
    ("A task with a priority from 1 to 5.", {"task": S, "priority": "integer"}),
    ("Translate 'hello' to Spanish.", {"english": S, "spanish": S}),
    ("A planet and its number of moons.", {"planet": S, "moons": "integer"}),
    ("A song title and whether it is instrumental.", {"title": S, "instrumental": "boolean"}),
]  # fmt: skip


def schema(fields: dict[str, Any]) -> dict[str, Any]:
    props = {k: {"type": v} if isinstance(v, str) else v for k, v in fields.items()}
    return {"type": "object", "properties": props, "required": list(fields)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    rows = []
    with Router() as router:
        cfg = router.config.models[args.model]
        models = {
            **router.config.models,
            args.model: cfg.model_copy(update={"supports_json": True}),
        }
        router.config = router.config.model_copy(update={"models": models})
        for mode in ("grammar", "prompt only"):
            valid = matching = 0
            started = time.perf_counter()
            for prompt, fields in CASES:
                shape = schema(fields)
                params: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": 0}
                text = f"{prompt} Reply with a JSON object with the keys {', '.join(fields)}."
                if mode == "grammar":
                    params["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": shape},
                    }
                done = router.complete(
                    [{"role": "user", "content": text}], args.model, cache=False, **params
                )
                try:
                    data = json.loads(done.text)
                except ValueError:
                    continue
                valid += 1
                try:
                    jsonschema.validate(data, shape)
                    matching += 1
                except jsonschema.ValidationError:
                    pass
            seconds = time.perf_counter() - started
            rows.append((mode, valid, matching, seconds))
    n = len(CASES)
    print(f"{'mode':<12} {'valid JSON':>12} {'matches schema':>16} {'s per answer':>13}")
    for mode, valid, matching, seconds in rows:
        print(
            f"{mode:<12} {valid:>6}/{n} {valid / n:>4.0%} {matching:>9}/{n} {matching / n:>4.0%} {seconds / n:>13.2f}"
        )


if __name__ == "__main__":
    main()
