"""`router learn`: learns what a deployment's labels say, adopts only what beats the shipped
estimator on held-out labels, and the file it writes routes serve/chat/score/calibrate."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends import FunctionBackend
from router.complexity import StructureEstimator, learned
from router.complexity.evaluation import auroc
from router.errors import ConfigError
from router.types import ChatRequest
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config

EVERYDAY = ["my sourdough starter", "the train to Lyon", "a birthday card for my aunt",
            "the weather this weekend", "my garden tomatoes", "a pasta recipe",
            "the football results", "a gift for a colleague"]  # fmt: skip
HARD_TOPIC = ["the VAT reverse charge", "a deferred tax liability", "transfer pricing rules",
              "the capital gains tax on shares", "depreciation for tax purposes"]  # fmt: skip
FRAMES = ["Quick question about {}: what should I do?", "Can you help me with {} today?",
          "I need advice on {}, please keep it short.", "Tell me about {} in a few words.",
          "What do you think about {}? Thanks a lot!", "Tips on {} for a beginner?"]  # fmt: skip


FILLER = "the team met on monday to review the quarterly plan and agreed that travel would stay flat while hiring goes on".split()  # noqa: E501, SIM905


def synthetic(n: int, seed: int) -> list[dict[str, Any]]:
    """A deployment's traffic as its judge saw it: questions about tax (a fifth) always needed
    the cloud; long proofreading requests (a fifth), which the shipped estimator scores near
    the top, never did; everyday questions of the same shape as the tax ones never did."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 5 == 1:
            text = " ".join(rng.choice(FILLER) for _ in range(rng.randint(120, 200)))
            prompt = f"Please fix the typos in this paragraph and keep my wording: {text}"
        else:
            prompt = rng.choice(FRAMES).format(rng.choice(HARD_TOPIC if i % 5 == 0 else EVERYDAY))
        rows.append({"prompt": prompt, "label": int(i % 5 == 0)})
    return rows


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_learns_a_topic_that_always_needs_the_cloud_and_routes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    labels = write_jsonl(tmp_path / "labels.jsonl", synthetic(300, seed=1))
    out = run("learn", "--labelled", str(labels), "--json", "--config", str(config))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["adopted"] is True and report["metric"] == "AUROC"
    assert report["learned"] > 0.95 > report["shipped"] + 0.2
    path = Path(report["path"])
    assert path == tmp_path / "estimator.json"  # next to models.toml

    # New prompts, never seen: the learned estimator ranks tax above everyday asks.
    fresh = synthetic(100, seed=2)
    lines = "".join(
        json.dumps({"id": i, "prompt": r["prompt"]}) + "\n" for i, r in enumerate(fresh)
    )
    scored = subprocess.run(
        [sys.executable, "-m", "router", "score", "--estimator", str(path)],
        input=lines, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    scores = [json.loads(line)["score"] for line in scored.stdout.splitlines()]
    assert auroc(scores, [r["label"] for r in fresh]) > 0.95
    shipped = StructureEstimator()
    v1 = [shipped.score(ChatRequest([{"role": "user", "content": r["prompt"]}])) for r in fresh]
    assert auroc(v1, [r["label"] for r in fresh]) < 0.75

    # [router] estimator = PATH: the router routes with it, and records its name.
    text = config.read_text().replace("[router]\n", f'[router]\nestimator = "{path.name}"\n', 1)
    config.write_text(text)
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    local = FunctionBackend("smollm2", lambda r, p: "local")
    cloud = FunctionBackend("cloud-mini", lambda r, p: "cloud")
    with Router(config, backends={"smollm2": local, "cloud-mini": cloud}) as router:
        assert router.estimator.name == report["name"]
        proofread = synthetic(2, seed=9)[1]["prompt"]
        asks = {
            "tax": "Quick question about the VAT reverse charge: what should I do?",
            "everyday": "Quick question about my sourdough starter: what should I do?",
            "proofread": proofread,
        }
        tiers = {
            k: router.complete([{"role": "user", "content": v}]).routing.tier
            for k, v in asks.items()
        }
        # Which requests go to the cloud changed (the same share of this traffic goes there).
        assert tiers == {"tax": "cloud", "everyday": "local", "proofread": "local"}
        v1 = {
            k: shipped.score(ChatRequest([{"role": "user", "content": v}])) for k, v in asks.items()
        }
        assert v1["tax"] < 0.35 < v1["proofread"]  # the shipped estimator had it the other way
        rows = router.ledger.entries()
        assert {e.estimator for e in rows} == {report["name"]}

    # calibrate and eval use it too: the configured one, or the one given with --estimator.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(lines)
    cal = run("calibrate", "--prompts", str(prompts), "--local-share", "0.8", "--dry-run",
              "--json", "--config", str(config))  # fmt: skip
    assert cal.returncode == 0, cal.stderr
    assert json.loads(cal.stdout)["estimator"] == report["name"]
    paired = write_jsonl(
        tmp_path / "paired.jsonl",
        [{"prompt": r["prompt"], "weak": not r["label"], "strong": True} for r in fresh],
    )
    measured = run("eval", "--paired", str(paired), "--estimator", str(path), "--json")
    assert measured.returncode == 0, measured.stderr
    routers = {r["router"]: r for r in json.loads(measured.stdout)}
    assert (
        routers[f"router ({report['name']})"]["paired apgr"]
        > routers["prompt length"]["paired apgr"]
    )


def test_refuses_an_estimator_no_better_than_the_shipped_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    rows = synthetic(300, seed=3)
    rng = random.Random(4)
    for r in rows:  # labels that have nothing to do with the prompt: nothing to learn
        r["label"] = int(rng.random() < 0.3)
    labels = write_jsonl(tmp_path / "noise.jsonl", rows)
    out = run("learn", "--labelled", str(labels), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "not adopted" in out.stdout and "nothing written" in out.stdout
    assert not (tmp_path / "estimator.json").exists()
    few = write_jsonl(tmp_path / "few.jsonl", synthetic(60, seed=5))
    out = run("learn", "--labelled", str(few), "--json", "--config", str(config))
    report = json.loads(out.stdout)
    assert report["adopted"] is False and "at least 100" in report["why"]
    assert not (tmp_path / "estimator.json").exists()


def test_paired_files_in_both_formats_and_clear_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    rows = synthetic(200, seed=6)
    paired = [{"prompt": r["prompt"], "weak": not r["label"], "strong": True} for r in rows]
    jsonl = write_jsonl(tmp_path / "paired.jsonl", paired)
    csv_file = tmp_path / "paired.csv"
    import csv

    with csv_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "weak-model", "strong-model"])
        writer.writerows([[r["prompt"], str(r["weak"]), "True"] for r in paired])
    reports = []
    for path in (jsonl, csv_file):
        out = run("learn", "--paired", str(path), "--dry-run", "--json", "--config", str(config))
        assert out.returncode == 0, out.stderr
        reports.append(json.loads(out.stdout))
    assert reports[0]["learned"] == reports[1]["learned"]
    assert reports[0]["metric"] == "APGR" and reports[0]["adopted"] is True
    assert reports[0]["path"] is None and not (tmp_path / "estimator.json").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "label": 1}\n{"prompt": "ok", "label": "maybe"}\n')
    out = run("learn", "--labelled", str(bad), "--config", str(config))
    assert out.returncode == 2 and "bad.jsonl line 2" in out.stderr
    assert "label must be" in out.stderr
    one_kind = write_jsonl(
        tmp_path / "one.jsonl", [{"prompt": f"q {i}", "label": 1} for i in range(20)]
    )
    out = run("learn", "--labelled", str(one_kind), "--config", str(config))
    assert out.returncode == 2 and "every label is 1" in out.stderr
    out = run("learn", "--config", str(config))  # an empty ledger
    assert out.returncode == 2 and "--labelled FILE" in out.stderr
    out = run("learn", "--paired", str(jsonl), "--labelled", str(bad), "--config", str(config))
    assert out.returncode == 2 and "give one of" in out.stderr


def test_a_broken_estimator_file_is_a_clear_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, None, '[router]\nestimator = "est.json"\n')
    text = config.read_text().replace('[router]\nestimator = "est.json"\n', "")
    config.write_text(text.replace("[router]\n", '[router]\nestimator = "est.json"\n', 1))
    with pytest.raises(ConfigError, match=r"est\.json: cannot read.*router learn"):
        Router(config)
    (tmp_path / "est.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not an estimator file `router learn` wrote"):
        Router(config)
    out = run("score", "--config", str(config))
    assert out.returncode == 2 and "est.json" in out.stderr


def test_the_learned_scale_keeps_the_local_share_of_the_training_traffic() -> None:
    rows = synthetic(400, seed=7)
    shipped = StructureEstimator()
    requests = [ChatRequest([{"role": "user", "content": r["prompt"]}]) for r in rows]
    examples = [learned.example(q, shipped) for q in requests]
    labels = [float(r["label"]) for r in rows]

    def metric(scores: Any, positions: Any) -> float:
        return auroc(list(scores), [round(labels[i]) for i in positions])

    estimator = learned.build(examples, labels, metric, {})
    reloaded = learned.LearnedEstimator.from_json(json.loads(json.dumps(estimator.to_json())))
    new = [reloaded.score(q) for q in requests]
    old = [ex.shipped for ex in examples]
    for ceiling in (0.2, 0.35, 0.5):
        share_new = sum(s <= ceiling for s in new) / len(new)
        share_old = sum(s <= ceiling for s in old) / len(old)
        assert share_new == pytest.approx(share_old, abs=0.06)
    assert all(0.0 <= s <= 1.0 for s in new)
    assert [reloaded.score(q) for q in requests[:20]] == [estimator.score(q) for q in requests[:20]]
