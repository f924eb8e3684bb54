"""`router quality` from people's feedback: the Wilson bound, groups, and the CLI's figures on
a ledger filled through the pipeline and rated through Router.feedback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router import Router
from router.backends import FunctionBackend
from router.governance.quality import wilson_lower
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config


@pytest.mark.parametrize(
    ("good", "total", "bound"),
    [(9, 10, 0.5958), (90, 100, 0.8256), (10, 10, 0.7225), (0, 5, 0.0), (0, 0, 0.0)],
)
def test_the_wilson_lower_bound(good: int, total: int, bound: float) -> None:
    assert wilson_lower(good, total) == pytest.approx(bound, abs=1e-4)


def test_quality_from_feedback_through_the_pipeline_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    local = FunctionBackend("smollm2", lambda r, p: "local answer")
    cloud = FunctionBackend("cloud-mini", lambda r, p: "cloud answer")
    with Router(config, backends={"smollm2": local, "cloud-mini": cloud}) as router:
        empty = subprocess.run(
            [sys.executable, "-m", "router", "quality", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert empty.returncode == 0 and "no local answer judged or rated" in empty.stdout
        chit = [f"Hello number {i}!" for i in range(6)]
        ids = [router.complete([{"role": "user", "content": t}]).response["id"] for t in chit]
        for i, rid in enumerate(ids):  # 5 good, 1 bad on chit-chat answered locally
            router.feedback(rid, "bad" if i == 0 else "good")
        hard = router.complete([{"role": "user", "content": HARD_PROMPT}])
        assert hard.routing.tier == "cloud"
        router.feedback(hard.response["id"], "bad")
        code = router.complete([{"role": "user", "content": "Fix this python: print 'x'"}])
        router.feedback(code.response["id"], "good")
    out = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    local_rated = 6 + (code.routing.tier == "local")
    good = 5 + (code.routing.tier == "local")
    assert (data["rated"], data["acceptable"]) == (local_rated, good)
    assert data["acceptable_rate"] == pytest.approx(good / local_rated, abs=1e-4)
    assert data["lower_bound"] == pytest.approx(wilson_lower(good, local_rated), abs=1e-4)
    assert data["feedback"]["cloud"] == {"good": int(code.routing.tier == "cloud"), "bad": 1}
    assert data["judged"] == 0 and data["judge_usd"] == 0.0
    chit_chat = next(g for g in data["groups"] if g["group"] == "chit-chat")
    assert (chit_chat["rated"], chit_chat["acceptable"]) == (6, 5)
    text = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--by", "score", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "with 95% confidence" in text.stdout and "0.0-0.1" in text.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--by", "colour", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--by 'colour'" in bad.stderr
