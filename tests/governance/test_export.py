"""`router export`: stored conversations as a clean fine-tuning set. Rows made through the
router itself (answered, streamed and cut, cached, flagged, refused, rated, judged, written
before prompts were stored); each filter's effect, and its count, shown by the command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from router import Router
from router.backends import FunctionBackend
from router.cli import app
from router.errors import RateLimitedError
from router.ledger import Entry, Verdict
from router.types import ChatRequest
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config

TEAMS = '\n[teams.ops]\nusers = ["zoe"]\n\n[[limits]]\nuser = "carl"\nrpm = 1\n'
CALL = {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": '{"d": "."}'}}


def answer(request: ChatRequest, params: dict[str, Any]) -> Any:
    asked = request.last_user_text
    if asked.startswith("List the files"):  # a tool call, as an agent's model makes
        message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3}, "id": "x",
                "object": "chat.completion", "created": 1, "model": "smollm2"}  # fmt: skip
    return f"local answer to {asked[:40]}"


def router_for(tmp_path: Path, store: bool) -> Router:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", TEAMS)  # not called: a double
    if store:
        config.write_text(
            config.read_text().replace("[router]\n", "[router]\nstore_prompts = true\n")
        )
    backends = {
        "smollm2": FunctionBackend("smollm2", answer),
        "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "the cloud's careful answer"),
    }
    return Router(config, backends=backends)


def ask(router: Router, text: str, user: str = "ana", **params: Any) -> str:
    done = router.complete([{"role": "user", "content": text}], user=user, **params)
    return str(done.response["id"])


@pytest.fixture(autouse=True)
def cloud_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)


@pytest.fixture
def ledger_rows(tmp_path: Path) -> dict[str, str]:
    """One row of each kind a clean set leaves out, and four that belong in it."""
    with router_for(tmp_path, store=False) as before:
        ask(before, "Written before prompts were stored.")
    ids: dict[str, str] = {}
    with router_for(tmp_path, store=True) as router:
        ids["haiku"] = ask(router, "Write a haiku about autumn leaves.")
        ask(router, "Write a haiku about autumn leaves.")  # a cache hit
        ask(router, "Summarise this:", user="bob")  # flagged: a trivial document
        ids["cloud"] = ask(router, HARD_PROMPT, user="zoe", model="cloud-mini")
        ids["good"] = ask(router, "Name three primary colours.")
        router.feedback(ids["good"], "good")
        ids["bad"] = ask(router, "Explain what a hash map is.")
        router.feedback(ids["bad"], "bad")
        ids["judged"] = ask(router, "What is the capital of Peru?")
        router.ledger.judged(ids["judged"], Verdict("unacceptable", "judge", "cloud-mini", "", 0))
        stream = router.stream([{"role": "user", "content": "Tell me a long story."}], user="ana")
        next(iter(stream))
        stream.close()  # the client stopped reading: a cut answer
        tools = router.stream([{"role": "user", "content": "List the files here."}], user="ana")
        ids["tools"] = tools.routing.response_id
        assert tools.text() == ""
        request = ChatRequest([{"role": "user", "content": "Hi"}], "auto", {}, "carl")
        router.admit(request)
        with pytest.raises(RateLimitedError):
            router.admit(request)  # refused: a row of its own
        router.ledger.begin(  # a paid call the router never saw end (it was killed)
            Entry(
                ts=time.time(),
                user="ana",
                tier="cloud",
                model="cloud-mini",
                prompt_tokens=9,
                completion_tokens=9,
                cost_usd=0.1,
                baseline_usd=0.1,
                tokens_saved=0,
                usd_saved=0,
                cache_hit=False,
                latency_ms=0,
                score=0.9,
                reason="unfinished",
                prompt='[{"role": "user", "content": "x"}]',
                response_id="chatcmpl-gone",
                pending=True,
            )
        )
    return ids


def export(tmp_path: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, int], str]:
    """The records `router export ARGS` wrote, what each filter removed, and its stderr."""
    out = tmp_path / "set.jsonl"
    config = str(tmp_path / "models.toml")
    result = CliRunner().invoke(app, ["export", "-o", str(out), *args, "--config", config])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    removed = {}
    for line in result.output.splitlines():
        count, _, step = line.strip().partition("  removed: ")
        if step:
            removed[step] = int(count)
    return records, removed, result.output


def asked(record: dict[str, Any]) -> str:
    return str(record["messages"][-2]["content"])


def test_the_default_set_keeps_only_whole_answers_nobody_faulted(
    tmp_path: Path, ledger_rows: dict[str, str]
) -> None:
    records, removed, said = export(tmp_path)
    assert [asked(r) for r in records] == [
        "Write a haiku about autumn leaves.", HARD_PROMPT, "Name three primary colours.",
        "List the files here.",
    ]  # fmt: skip
    assert records[0]["messages"] == [
        {"role": "user", "content": "Write a haiku about autumn leaves."},
        {"role": "assistant", "content": "local answer to Write a haiku about autumn leaves."},
    ]
    assert records[1]["messages"][-1]["content"] == "the cloud's careful answer"
    # A streamed tool call is kept whole: the call, its id and its arguments.
    assert records[3]["messages"][-1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL],
    }
    assert "metadata" not in records[0]
    assert removed == {
        "unfinished": 1, "refused": 1, "not stored": 1, "other users": 0, "cache hits": 1,
        "flagged": 1, "cut": 1, "other categories": 0, "rating": 1, "verdict": 1,
    }  # fmt: skip
    assert said.startswith(f"router export: 4 records to {tmp_path / 'set.jsonl'} from 12 rows")


def test_each_filter_narrows_the_set_and_says_by_how_much(
    tmp_path: Path, ledger_rows: dict[str, str]
) -> None:
    records, removed, _ = export(tmp_path, "--min-rating", "good")
    assert [asked(r) for r in records] == ["Name three primary colours."]
    assert removed["rating"] == 5  # the bad one, and four nobody rated

    records, removed, _ = export(tmp_path, "--team", "ops")
    assert [asked(r) for r in records] == [HARD_PROMPT] and removed["other users"] == 8
    records, _, _ = export(tmp_path, "--user", "ana", "--user", "zoe", "--category", "code")
    assert [asked(r) for r in records] == [HARD_PROMPT]

    with Router(tmp_path / "models.toml", backends={}) as router:
        router.ledger.judged(ledger_rows["haiku"], Verdict("acceptable", "j", "cloud-mini", "", 0))
    records, removed, _ = export(tmp_path, "--judged-acceptable")
    assert [asked(r) for r in records] == ["Write a haiku about autumn leaves."]
    assert removed["verdict"] == 4

    records, removed, _ = export(tmp_path, "--include-flagged", "--include-cache-hits")
    assert [asked(r) for r in records].count("Write a haiku about autumn leaves.") == 2
    assert "Summarise this:" in [asked(r) for r in records]
    assert removed["flagged"] == removed["cache hits"] == 0

    records, _, _ = export(tmp_path, "--metadata", "--user", "zoe")
    assert records[0]["metadata"]["id"] == ledger_rows["cloud"]
    assert records[0]["metadata"]["tier"] == "cloud" and records[0]["metadata"]["user"] == "zoe"


def test_bad_options_are_refused_with_what_to_write(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None, TEAMS))
    for args, words in [
        (["--team", "ghosts"], "team 'ghosts' is not in models.toml (ops)"),
        (["--category", "poems"], "category 'poems' is not one of"),
        (["--min-rating", "great"], "--min-rating 'great': choose unrated or good"),
        (["--format", "csv"], "--format 'csv': jsonl is the one format"),
        (["--since", "forever"], "--since 'forever': expected a number"),
        (["-o", str(tmp_path / "no" / "set.jsonl")], "does not exist"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "router", "export", *args, "--config", config],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)


def test_without_stored_prompts_it_says_how_to_get_them(tmp_path: Path) -> None:
    with router_for(tmp_path, store=False) as router:
        ask(router, "Write a haiku about autumn leaves.")
    records, removed, said = export(tmp_path)
    assert records == [] and removed["not stored"] == 1
    assert "store_prompts is off" in said
