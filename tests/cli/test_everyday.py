"""Everyday use of the command line, as someone coming from `llm` or Ollama tries it: each
finding of issue 17, through the real `router` process (and the loopback cloud stand-in where
a model must answer)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.cli.common import money
from router.ledger import Entry, SQLiteLedger
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud, Fault, answer_for


def router(
    *args: str,
    cwd: Path,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env={**os.environ, "XDG_STATE_HOME": str(cwd / "state"), **(env or {})},
    )


def one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    return out.stderr


# ---------------------------------------------------------------- small gaps (10)


def test_version_and_short_help(tmp_path: Path) -> None:
    version = router("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("router 0.")
    short = router("chat", "-h", cwd=tmp_path)
    assert short.returncode == 0 and "--continue" in short.stdout
    assert "<bool>" not in short.stdout and "╭" not in short.stdout  # plain, as click prints


def test_money_is_written_one_way_sized_to_the_amount() -> None:
    assert money(0) == "$0"
    assert money(5.4e-05) == "$0.000054"
    assert money(5.4e-06) == "$0.0000054"
    assert money(0.0123) == "$0.012"
    assert money(12.345) == "$12.35" and money(1234.5) == "$1,234.50"


def test_explain_joins_words_and_reads_a_pipe(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))
    words = router("explain", "hi", "there", "--json", "--config", config, cwd=tmp_path)
    assert words.returncode == 0, words.stderr
    piped = router("explain", "--json", "--config", config, cwd=tmp_path, stdin="hi there")
    assert json.loads(piped.stdout)["score"] == json.loads(words.stdout)["score"]
    one_line_error(router("explain", "--config", config, cwd=tmp_path), 2)


def test_budget_rm_and_a_wrong_on_exceed_names_the_option(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))
    wrong = router(
        "budget",
        "set",
        "ana",
        "--daily-usd",
        "1",
        "--on-exceed",
        "warn",
        "--config",
        config,
        cwd=tmp_path,
    )
    assert wrong.returncode == 2 and "'--on-exceed'" in wrong.stderr
    assert "'block', 'local-only'" in wrong.stderr
    ok = router("budget", "set", "ana", "--daily-usd", "0.5", "--config", config, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    shown = router("budget", "show", "--config", config, cwd=tmp_path)
    assert "daily_usd $0/$0.50" in shown.stdout
    removed = router("budget", "rm", "ana", "--config", config, cwd=tmp_path)
    assert removed.returncode == 0 and "budget for user:ana removed" in removed.stderr
    assert "no budgets" in router("budget", "show", "--config", config, cwd=tmp_path).stdout
    assert "no budget for user:ana" in one_line_error(
        router("budget", "rm", "ana", "--config", config, cwd=tmp_path), 2
    )


def test_keys_list_says_when_there_are_none(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None, '\n[server]\nkeys_path = "keys.sqlite3"\n'))
    out = router("keys", "list", "--config", config, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == ""
    assert "no keys yet: create one with 'router keys create --user NAME'" in out.stderr


# ---------------------------------------------------------------- one-line errors (7)


def test_serve_refuses_a_bad_or_busy_port_in_one_line(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))
    bad = router("serve", "--port", "99999", "--config", config, cwd=tmp_path)
    assert bad.returncode == 2 and "'--port'" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = router("serve", "--port", port, "--config", config, cwd=tmp_path, timeout=60)
    line = one_line_error(out, 2)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line
    assert "serving" not in out.stderr


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))
    plain = router("chat", "hi", "-m", "nosuch", "--config", config, cwd=tmp_path)
    assert "model 'nosuch' not found" in one_line_error(plain, 2)
    debug = router("--debug", "chat", "hi", "-m", "nosuch", "--config", config, cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_a_disabled_model_says_it_is_disabled(tmp_path: Path) -> None:
    extra = '\n[models.phi3-mini]\ntier = "local"\nenabled = false\npath = "phi3.gguf"\n'
    config = str(write_config(tmp_path, None, extra))
    line = one_line_error(
        router("chat", "hi", "-m", "phi3-mini", "--config", config, cwd=tmp_path), 2
    )
    assert "model 'phi3-mini' is disabled in models.toml: set enabled = true under" in line


def test_eval_without_data_says_where_to_get_it(tmp_path: Path) -> None:
    out = router("eval", cwd=tmp_path, env={"ROUTER_DATA": str(tmp_path / "nothing")})
    line = one_line_error(out, 2)
    assert "no evaluation data in" in line and "docs/data.md" in line and "--data DIR" in line


# ---------------------------------------------------------------- logs and ps


def test_logs_shows_the_latest_requests_and_prompts_when_stored(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        for i in range(3):
            ledger.record(
                Entry(
                    ts=time.time(),
                    user="ana",
                    tier="cloud",
                    model="cloud-mini",
                    prompt_tokens=10,
                    completion_tokens=5,
                    cost_usd=5.4e-05,
                    baseline_usd=1e-4,
                    tokens_saved=0,
                    usd_saved=4.6e-05,
                    cache_hit=False,
                    latency_ms=120.0,
                    score=0.5,
                    reason="r",
                    prompt=json.dumps([{"role": "user", "content": f"ask {i}"}]),
                    api="messages" if i == 2 else "chat",
                )
            )
    out = router("logs", "-n", "2", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and "cloud · cloud-mini  score" in lines[0] and "$0.000054" in lines[0]
    assert "cloud · cloud-mini via messages  score" in lines[2]  # the API, when not chat
    assert lines[1] == "    > ask 1" and lines[3] == "    > ask 2"  # newest last
    assert "store_prompts = true" in out.stderr  # this config does not store them
    data = json.loads(router("logs", "--json", "--config", str(config), cwd=tmp_path).stdout)
    assert [d["messages"][0]["content"] for d in data] == ["ask 0", "ask 1", "ask 2"]
    assert [d["api"] for d in data] == ["chat", "chat", "messages"]


def test_any_command_whose_reader_stops_early_exits_0(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        row = dict(user="ana", tier="local", model="smollm2", prompt_tokens=1, completion_tokens=1)
        for _ in range(50):
            ledger.record(
                Entry(ts=time.time(), **row, cost_usd=0, baseline_usd=0, tokens_saved=2,
                      usd_saved=0, cache_hit=False, latency_ms=1, score=0.1, reason="r")
            )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "logs", "-n", "50", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_probe_says_when_a_server_answers_any_name_and_exits_3_when_one_is_down(
    tmp_path: Path, fake_cloud: FakeCloud
) -> None:
    extra = (
        f'\n[models.team]\ntier = "local"\napi_base = "{fake_cloud.base_url}"\n'
        'remote_model = "llama3"\n'  # not listed by the stand-in, which answers any name
        '\n[models.gone]\ntier = "local"\napi_base = "http://127.0.0.1:9/v1"\nremote_model = "x"\n'
    )
    config = str(write_config(tmp_path, fake_cloud.base_url, extra))
    out = router("models", "--probe", "--config", config, cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "answers any model name ('llama3' is not listed but answered)" in lines["team"]
    assert "cannot be reached" in lines["gone"]
    assert fake_cloud.requests[-1]["max_tokens"] == 1  # the one-token question
    as_json = router("models", "--probe", "--json", "--config", config, cwd=tmp_path)
    assert as_json.returncode == 3
    rows = {r["model"]: r for r in json.loads(as_json.stdout)}
    assert rows["team"]["answers_any_name"] is True and rows["gone"]["error"]


def test_ps_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = router("ps", "--url", f"http://127.0.0.1:{free}", cwd=tmp_path)
    assert "no router server answers at" in one_line_error(out, 3)
    assert "router serve" in out.stderr


# ---------------------------------------------------------------- chat: forced tiers, pipes


@pytest.fixture
def cloud_env(tmp_path: Path, fake_cloud: FakeCloud) -> tuple[str, dict[str, str]]:
    return str(write_config(tmp_path, fake_cloud.base_url)), {CLOUD_KEY_ENV: CLOUD_KEY}


@pytest.mark.slow
def test_a_forced_cloud_tier_never_answers_locally(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "http://127.0.0.1:9/v1"))
    no_key = router("chat", "Hi", "-m", "cloud", "--config", config, cwd=tmp_path)
    assert "cloud-mini: ROUTER_TEST_CLOUD_KEY is not set" in one_line_error(no_key, 3)
    down = router(
        "chat", "Hi", "-m", "cloud", "--config", config, cwd=tmp_path, env={CLOUD_KEY_ENV: "k"}
    )
    line = one_line_error(down, 3)
    assert "cannot reach http://127.0.0.1:9/v1 (Connection refused)" in line
    assert down.stdout == ""  # nothing was answered, locally or otherwise


@pytest.mark.slow
def test_piped_text_and_the_prompt_are_sent_together(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_env: tuple[str, dict[str, str]]
) -> None:
    config, env = cloud_env
    report = "Quarterly report.\nRevenue grew 12% while costs fell 3%.\n"
    out = router(
        "chat",
        "Summarise",
        "this",
        "-m",
        "cloud",
        "--config",
        config,
        cwd=tmp_path,
        stdin=report,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    sent = fake_cloud.requests[-1]["messages"]
    assert sent == [{"role": "user", "content": report.rstrip("\n") + "\n\nSummarise this"}]
    assert "trivial-document" not in out.stderr


@pytest.mark.slow
def test_chat_names_its_user_and_shows_what_a_cloud_answer_cost(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_env: tuple[str, dict[str, str]]
) -> None:
    config, env = cloud_env
    ana = router("chat", "Hi", "-m", "cloud", "--user", "ana", "--config", config, cwd=tmp_path,
                 env=env)  # fmt: skip
    assert ana.returncode == 0, ana.stderr
    assert " · cost $0.0000" in ana.stderr  # what the answer cost, beside what it saved
    ben = router("chat", "Hello", "-m", "cloud", "--config", config, cwd=tmp_path,
                 env={**env, "ROUTER_USER": "ben"})  # fmt: skip
    assert ben.returncode == 0, ben.stderr
    rows = json.loads(router("logs", "--json", "--config", config, cwd=tmp_path).stdout)
    assert sorted(row["user"] for row in rows) == ["ana", "ben"]


@pytest.mark.slow
def test_continue_resumes_the_last_conversation(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_env: tuple[str, dict[str, str]]
) -> None:
    config, env = cloud_env
    assert "no earlier conversation" in one_line_error(
        router("chat", "-c", "hi", "--config", config, cwd=tmp_path, env=env), 2
    )
    first = router(
        "chat", "My name is Ana.", "-m", "cloud", "--config", config, cwd=tmp_path, env=env
    )
    assert first.returncode == 0, first.stderr
    then = router(
        "chat", "-c", "What is my name?", "-m", "cloud", "--config", config, cwd=tmp_path, env=env
    )
    assert then.returncode == 0, then.stderr
    sent = fake_cloud.requests[-1]["messages"]
    assert [m["content"] for m in sent] == [
        "My name is Ana.",
        answer_for([{"role": "user", "content": "My name is Ana."}]),
        "What is my name?",
    ]


@pytest.mark.slow
def test_sampled_chats_are_not_replayed_from_the_cache(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_env: tuple[str, dict[str, str]]
) -> None:
    config, env = cloud_env
    args = (
        "chat",
        "Tell me a random joke",
        "-m",
        "cloud",
        "--temperature",
        "1.2",
        "--config",
        config,
    )
    for _ in range(3):
        out = router(*args, cwd=tmp_path, env=env)
        assert out.returncode == 0 and "cache miss" in out.stderr, out.stderr
    assert len(fake_cloud.requests) == 3


@pytest.mark.slow
def test_a_reader_that_stops_early_is_not_an_error(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_env: tuple[str, dict[str, str]]
) -> None:
    config, env = cloud_env
    fake_cloud.inject(Fault(200, delay=1.0))  # the answer comes after the reader has gone
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "router",
            "chat",
            "List three fruits",
            "-m",
            "cloud",
            "--config",
            config,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "error" not in err
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        assert len(ledger.entries()) == 1  # the call was paid for: it is recorded


@pytest.mark.slow
def test_ps_shows_the_loaded_local_model_of_a_running_server(tmp_path: Path) -> None:
    from router import Router
    from router.server.app import create_app
    from tests.server_harness import ServerThread

    with Router(write_config(tmp_path, None)) as served, ServerThread(create_app(served)) as srv:
        cold = json.loads(router("ps", "--json", "--url", srv.url + "/v1", cwd=tmp_path).stdout)
        assert cold[0]["name"] == "smollm2" and cold[0]["pid"] is None
        served.complete([{"role": "user", "content": "Hi"}], model="local", max_tokens=2)
        out = router("ps", "--url", srv.url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()  # "Hi" is too short a prompt to keep its KV state
    columns = ["MODEL", "STATE", "PID", "MEMORY", "BUSY", "KV", "CACHE", "GENERATIONS"]
    assert header.split() == columns
    fields = row.split()
    assert fields[:2] == ["smollm2", "ready"] and int(fields[2]) > 0
    assert fields[4] == "MB" and float(fields[3].replace(",", "")) > 50  # the model's memory
    assert fields[5] == "0/16"
    assert fields[6:10] == ["0", "conv,", "0/256", "MB"]  # no conversation kept, of 256 MB
