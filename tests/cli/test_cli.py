"""The command line: Typer's CliRunner for the commands, and the interactive chat driven for
real under a pseudo-terminal (the real model, the loopback cloud stand-in)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.backends.llama_process import extra_buffers_choice, system_info
from router.cli import app
from router.cli.common import parse_since
from router.errors import RequestError
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud, answer_for

runner = CliRunner()


def test_explain_shows_score_signals_and_decision_without_calling_a_model(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = str(write_config(tmp_path, fake_cloud.base_url))
    out = runner.invoke(app, ["explain", HARD_PROMPT, "--config", config])
    assert out.exit_code == 0, out.output
    # The code block and the reasoning verbs (the intent signal) push it most to the cloud.
    assert re.search(r"score\s+0\.\d\d\s+\(top signals: intent \+\d\.\d\d, \w+ [+-]", out.output)
    assert "decision   cloud-mini   then smollm2" in out.output
    assert "above" in out.output or "ceiling" in out.output

    data = json.loads(runner.invoke(app, ["explain", "Hi!", "--json", "--config", config]).output)
    assert data["decision"]["candidates"] == ["smollm2", "cloud-mini"]
    assert data["score"] <= 0.1 and any("small_talk" in k for k in data["signals"])
    assert {m["name"]: m["blocked_by"] for m in data["models"]} == {"smollm2": [], "cloud-mini": []}
    assert fake_cloud.requests == []  # nothing was called

    long = runner.invoke(app, ["explain", "x " * 3000, "--json", "--config", config])
    data = json.loads(long.output)
    assert data["decision"]["candidates"] == ["cloud-mini"]
    assert "tokens of context, has 1024" in data["models"][0]["blocked_by"][0]


def test_models_lists_tier_usability_context_and_prices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CLOUD_KEY_ENV, raising=False)
    config = str(write_config(tmp_path, "http://127.0.0.1:9/v1"))
    data = json.loads(runner.invoke(app, ["models", "--json", "--config", config]).output)
    by_name = {m["name"]: m for m in data}
    assert by_name["smollm2"]["tier"] == "local" and by_name["smollm2"]["usable"] is True
    assert by_name["smollm2"]["n_ctx"] == 1024 and by_name["smollm2"]["input_per_mtok"] == 0
    cloud = by_name["cloud-mini"]
    assert cloud["usable"] is False and cloud["why_not"] == f"{CLOUD_KEY_ENV} is not set"
    assert cloud["input_per_mtok"] == pytest.approx(0.15) and cloud["n_ctx"] == 128000
    table = runner.invoke(app, ["models", "--config", config])
    assert table.exit_code == 0 and "smollm2" in table.output and "0.15" in table.output
    # How the worker will load the local model: the same decision it makes, on this build.
    try:
        build = system_info()
    except ImportError as exc:  # the fast tier without llama_cpp: the command says "unknown"
        build = f"unknown (ImportError: {exc})"
    enabled, why = extra_buffers_choice("auto", build)
    assert by_name["smollm2"]["extra_buffers"] == {
        "setting": "auto",
        "enabled": enabled,
        "why": why,
        "summary": f"{'on' if enabled else 'off'} (auto)",
    }
    assert cloud["extra_buffers"] is None
    assert f"extra buffers: {why}" in table.output


@pytest.mark.slow
def test_stats_reports_the_ledger(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router import Router

    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    path = write_config(tmp_path, fake_cloud.base_url)
    with Router(path) as router:
        router.complete([{"role": "user", "content": "Hi"}], max_tokens=4, user="ana")
        router.complete([{"role": "user", "content": "Hi"}], max_tokens=4, user="ben")
        router.complete([{"role": "user", "content": HARD_PROMPT}], max_tokens=20, user="ana")
    out = runner.invoke(app, ["stats", "--json", "--config", str(path)])
    data = json.loads(out.output)
    assert data["requests"] == 3 and data["cache_hits"] == 1
    assert data["by_tier"] == {"local": 2, "cloud": 1}
    assert data["cache_hit_rate"] == pytest.approx(1 / 3)
    assert data["tokens_saved"] > 0 and data["usd_saved"] > 0
    by_user = json.loads(
        runner.invoke(app, ["stats", "--by", "user", "--json", "--config", str(path)]).output
    )
    assert {g["group"]: g["requests"] for g in by_user["groups"]} == {"ana": 2, "ben": 1}
    table = runner.invoke(app, ["stats", "--by", "model", "--since", "1h", "--config", str(path)])
    assert table.exit_code == 0 and "cloud-mini" in table.output and "total" in table.output
    bad = runner.invoke(app, ["stats", "--by", "colour", "--config", str(path)])
    assert isinstance(bad.exception, RequestError)


def test_since_parsing() -> None:
    now = time.time()
    assert parse_since("7d") == pytest.approx(now - 7 * 86400, abs=5)
    assert parse_since("30m") == pytest.approx(now - 1800, abs=5)
    with pytest.raises(RequestError, match=r"e\.g\. 24h, 7d, 30d"):
        parse_since("last week")
    # Every window has a maximum (a window sizes the work of every read over the ledger).
    assert parse_since("400d") == pytest.approx(now - 400 * 86400, abs=5)
    for too_long in ("401d", "100000000d", "58w", "9" * 30 + "d"):
        with pytest.raises(RequestError, match=r"400 days|expected a number") as refused:
            parse_since(too_long, "since")
        assert refused.value.param == "since"


def test_exit_codes_are_meaningful(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLOUD_KEY_ENV, raising=False)
    config = str(write_config(tmp_path, "http://127.0.0.1:9/v1"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    unavailable = run("chat", "hi", "-m", "cloud-mini", "--config", config)
    assert unavailable.returncode == 3
    assert unavailable.stderr.startswith("error: ") and "is not set" in unavailable.stderr
    assert run("chat", "hi", "-m", "nope", "--config", config).returncode == 2
    assert run("explain", "   ", "--config", config).returncode == 2
    assert run("chat", "--no-such-flag").returncode == 2


def _controlling_tty() -> None:
    # In the child, after setsid: make the pty its controlling terminal, so that Ctrl-C
    # typed on it is delivered as SIGINT, as in a real terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pseudo-terminal: type lines, read until a pattern appears."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            preexec_fn=_controlling_tty,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen in:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        if match is None:
            raise AssertionError(f"{pattern!r} not seen before the terminal closed")
        found, self.seen = self.seen[: match.end()], self.seen[match.end() :]
        return found

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    @classmethod
    def chat(cls, tmp_path: Path, config: Path, max_tokens: int) -> Terminal:
        """`router chat` as a person starts it in a terminal."""
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color"}
        args = ["chat", "--max-tokens", str(max_tokens), "--config", str(config)]
        return cls([sys.executable, "-m", "router", *args], env, tmp_path)

    def leave(self, turns: int) -> None:
        """Ctrl-D at the prompt: the chat says how many turns it had and exits 0."""
        self.expect(r"you> ")
        self.send("\x04")
        self.expect(rf"{turns} turns")
        assert self.close() == 0


@pytest.mark.slow
def test_interactive_chat_under_a_real_terminal(tmp_path: Path, fake_cloud: FakeCloud) -> None:
    config = write_config(tmp_path, fake_cloud.base_url)
    env = {
        **os.environ,
        CLOUD_KEY_ENV: CLOUD_KEY,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    term = Terminal(
        [sys.executable, "-m", "router", "chat", "--max-tokens", "12", "--config", str(config)],
        env,
        tmp_path,
    )
    try:
        term.expect(r"auto mode")
        term.expect(r"you> ")
        term.send("Hi there!\r")
        first = term.expect(r"\[local · smollm2 · score 0\.\d\d · cache miss[^\n]*\n")
        assert "Loading local model smollm2" in first  # the spinner, on a terminal
        term.expect(r"you> ")
        term.send("/cloud\r")
        term.expect(r"mode: cloud")
        term.send("And the weather?\r")
        answer = term.expect(r"\[cloud · cloud-mini[^\n]*\n")
        assert answer_for([{"role": "user", "content": "And the weather?"}]) in answer
        # The cloud got the whole conversation: both user turns and the local answer.
        sent = fake_cloud.requests[-1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        term.expect(r"you \(cloud\)> ")
        term.send("/stats\r")
        stats = term.expect(r"2 turns: 1 local, 1 cloud, 0 from cache[^\n]*\n")
        assert "saved" in stats
        term.send("/auto\r")
        term.expect(r"mode: auto")
        term.send("/exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert (tmp_path / "state" / "router" / "chat_history").is_file()


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_not_the_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    with Terminal.chat(tmp_path, config, max_tokens=400) as term:
        term.expect(r"you> ")
        term.send("Write a very long story about a dragon.\r")
        # Wait until the spinner is gone (cursor shown again) and the answer is being written.
        term.expect(r"dragon\.\r\n[\s\S]*?\x1b\[\?25h[\s\S]*?[A-Za-z]{3,}")
        term.send("\x03")  # Ctrl-C
        stopped = term.expect(r"\[stopped\][\s\S]*?\[local · smollm2[^\n]*\n")
        assert "stream stopped before the end" in stopped
        term.expect(r"you> ")
        term.send("Hi\r")
        term.expect(r"\[local · smollm2[^\n]*\n")
        term.leave(turns=2)


@pytest.mark.slow
def test_piped_chat_shows_no_spinner(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    out = subprocess.run(
        [sys.executable, "-m", "router", "chat", "--max-tokens", "4", "--config", str(config)],
        input="Hello",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "Loading" not in out.stderr and "\x1b" not in out.stderr


def cloud_terminal(tmp_path: Path, fake_cloud: FakeCloud, *args: str) -> Terminal:
    config = write_config(tmp_path, fake_cloud.base_url)
    env = {
        **os.environ,
        CLOUD_KEY_ENV: CLOUD_KEY,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    command = [sys.executable, "-m", "router", "chat", "--max-tokens", "8", *args]
    return Terminal([*command, "--config", str(config)], env, tmp_path)


@pytest.mark.slow
def test_ctrl_c_during_the_first_cloud_answer_keeps_the_session(
    tmp_path: Path, fake_cloud: FakeCloud
) -> None:
    with cloud_terminal(tmp_path, fake_cloud, "-m", "cloud") as term:
        term.expect(r"you \(cloud\)> ")
        term.send("What is the capital of France?\r")
        term.expect(r"France\?\r\n")
        time.sleep(0.3)  # litellm is still being imported (it takes seconds)
        term.send("\x03")
        term.expect(r"\[stopped\]")
        term.expect(r"you \(cloud\)> ")
        term.send("And of Italy?\r")
        answer = term.expect(r"\[cloud · cloud-mini[^\n]*\n")
        assert answer_for([{"role": "user", "content": "And of Italy?"}]) in answer
        assert "AttributeError" not in answer and "error" not in answer
        term.expect(r"you \(cloud\)> ")
        term.send("exit\r")  # a word that leaves, never a paid call
        term.expect(r"1 turns")
        assert term.close() == 0
    assert [m["messages"][-1]["content"] for m in fake_cloud.requests][-1] == "And of Italy?"


@pytest.mark.slow
def test_repl_commands_multi_line_messages_and_the_system_prompt(
    tmp_path: Path, fake_cloud: FakeCloud
) -> None:
    with cloud_terminal(tmp_path, fake_cloud, "-m", "cloud") as term:
        term.expect(r"you \(cloud\)> ")
        term.send("/foo\r")
        term.expect(r"unknown command /foo; /help lists them")
        term.send("/bad\r")
        term.expect(r"nothing to rate yet")
        term.send("/system Answer in French.\r")
        term.expect(r"system prompt: 'Answer in French.'")
        term.send('"""\r')
        term.expect(r"\.\.\. ")
        term.send("first line\r")
        term.send('second line"""\r')
        term.expect(r"\[cloud · cloud-mini[^\n]*\n")
        sent = fake_cloud.requests[-1]["messages"]
        assert sent == [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "first line\nsecond line"},
        ]
        term.expect(r"you \(cloud\)> ")
        term.send("/good right on\r")
        term.expect(r"noted: good \(right on\)")
        term.send("/bye\r")
        term.expect(r"1 turns")
        assert term.close() == 0
    assert len(fake_cloud.requests) == 1  # neither /foo, /bye nor the fences were sent
    # The conversation is kept for `router chat -c`.
    saved = json.loads((tmp_path / "state" / "router" / "last_conversation.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    from router.ledger import SQLiteLedger

    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        (row,) = ledger.entries()
    assert (row.rating, row.feedback) == ("good", "right on")
