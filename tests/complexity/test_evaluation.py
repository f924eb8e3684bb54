"""RouteLLM's routing metrics, `router score` and `router eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli import app
from router.complexity import StructureEstimator
from router.complexity.evaluation import apgr, auroc, pgr_curve
from router.errors import RequestError
from router.types import ChatRequest

runner = CliRunner()


def test_pgr_apgr_and_cpt_on_a_hand_computed_case() -> None:
    # Four prompts; the strong model wins on prompts 0 and 1 only.
    weak = [0.0, 0.0, 1.0, 1.0]
    strong = [1.0, 1.0, 1.0, 1.0]
    perfect = [0.9, 0.8, 0.1, 0.0]
    assert pgr_curve(perfect, weak, strong) == [0.0, 0.5, 1.0, 1.0, 1.0]
    m = apgr(perfect, weak, strong)
    assert m["apgr"] == pytest.approx((0.25 + 0.75 + 1 + 1) / 4)
    assert (m["cpt50"], m["cpt80"]) == (0.25, 0.5)
    worst = apgr([0.0, 0.1, 0.8, 0.9], weak, strong)
    assert worst["apgr"] == pytest.approx((0 + 0 + 0.25 + 0.75) / 4)
    assert (worst["cpt50"], worst["cpt80"]) == (0.75, 1.0)


def test_auroc_with_ties() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5


def test_score_reads_json_lines_and_keeps_order() -> None:
    lines = [
        {"id": 1, "prompt": "Hello!"},
        {
            "id": "x",
            "messages": [
                {
                    "role": "user",
                    "content": "Explain step by step why"
                    " quicksort is fast, with Python code ```def f(): pass```",
                }
            ],
        },
        {"id": 3, "prompt": "thanks"},
    ]
    out = runner.invoke(app, ["score"], input="\n".join(json.dumps(x) for x in lines) + "\n")
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["id"] for r in rows] == [1, "x", 3]
    assert rows[1]["score"] > 0.35 > rows[0]["score"]
    v1 = StructureEstimator()  # the default estimator
    assert rows[2]["score"] == v1.score(ChatRequest([{"role": "user", "content": "thanks"}]))
    bad = runner.invoke(app, ["score"], input='{"id": 1, "prompt": "ok"}\n{"id": 2}\n')
    assert isinstance(bad.exception, RequestError) and "stdin line 2" in str(bad.exception)


def test_eval_on_custom_sets_prints_baselines_side_by_side(tmp_path: Path) -> None:
    paired = tmp_path / "paired.jsonl"
    rows = [
        {"prompt": "Hi", "weak": True, "strong": True},
        {
            "prompt": "Prove that the square root of 2 is irrational, step by step.",
            "weak": False,
            "strong": True,
        },
        {"prompt": "Thanks!", "weak": True, "strong": True},
        {
            "prompt": "Explain why this Python code is slow: ```for i in x: x.count(i)```",
            "weak": False,
            "strong": True,
        },
    ]
    paired.write_text("\n".join(json.dumps(r) for r in rows))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(
        "\n".join(json.dumps({"prompt": r["prompt"], "label": int(not r["weak"])}) for r in rows)
    )
    out = runner.invoke(
        app, ["eval", "--paired", str(paired), "--labelled", str(labelled), "--json"]
    )
    assert out.exit_code == 0, out.output
    table = {r["router"]: r for r in json.loads(out.output)}
    assert set(table) >= {"router (structure-v1)", "random (10 seeds)", "prompt length", "oracle"}
    # The estimator ranks both prompts the strong model wins first: as good as the oracle.
    assert table["router (structure-v1)"]["paired apgr"] == pytest.approx(0.75)
    assert table["oracle"]["paired apgr"] == pytest.approx(0.75)
    assert table["router (structure-v1)"]["labelled AUROC"] == 1.0
    assert table["oracle"]["paired apgr"] >= table["random (10 seeds)"]["paired apgr"]
    missing = runner.invoke(app, ["eval", "--data", str(tmp_path / "nowhere")])
    assert isinstance(missing.exception, RequestError)


def test_auroc_of_one_kind_of_label_is_undefined_not_a_crash() -> None:
    import math

    assert math.isnan(auroc([0.1, 0.9], [1, 1])) and math.isnan(auroc([0.3], [0]))
