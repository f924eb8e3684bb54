"""The configuration: models.toml → validated pydantic models. The only place it is read.

Lookup order (first hit wins): an explicit path (`--config`), `$ROUTER_CONFIG`, `./models.toml`,
the user's config dir (`router/models.toml` there), then the default shipped in the package.
A `./models.toml` that is the shipped default itself (a clone's root) is passed over.

Also here: `sections` (the other tables; Price, Budget), `errors` (pydantic's errors as file,
key and expectation), `model_files` (where a GGUF is, why it cannot load), `hub` (`router pull`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.config.errors import describe
from router.config.files import package_file as package_file  # re-exported
from router.config.sections import (
    AgentSettings,
    AlertSettings,
    CacheSettings,
    GuardrailSettings,
    LedgerSettings,
    QualitySettings,
    RetrySettings,
    RouterSettings,
    ServerSettings,
    SharedSettings,
    _Strict,
    check_scopes,
)
from router.config.sections import Budget as Budget  # re-exported: budgets are config
from router.config.sections import Price as Price  # re-exported: prices are config
from router.config.sections import RateLimit as RateLimit  # re-exported
from router.errors import ConfigError
from router.reachability import safe_url
from router.types import CATEGORIES, ROUTING_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

APP_NAME = "router"
ENV_CONFIG = "ROUTER_CONFIG"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


FREE = Price(input_per_mtok=0.0, output_per_mtok=0.0)


def _env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(
            f"{value[:6]!r}... is not an environment variable name; put the secret in an "
            "environment variable and name that variable here"
        )
    return value


class LocalModel(_Strict):
    """A local model: a GGUF file run by llama-cpp-python in a supervised worker process, or
    a model served by an OpenAI-compatible server the team runs (Ollama, llama-server, vLLM,
    LM Studio), on this machine or another.

    The model comes from exactly one of: `path`; `package` + `file` (a file inside an installed
    Python package, found without importing it); `hf_repo` + `hf_file` (downloaded by `router
    pull` into the Hugging Face cache); `api_base` + `remote_model` (a server's `/v1` URL, or a
    list of them serving the same model as a pool, and the name that server knows the model
    by; `api_key_env` names the variable with its key, if it wants one). A remote local model
    is local in every sense: free unless priced, never budgeted, counted as saved.

    `extra_buffers`: llama.cpp's extra weight buffer types (repacked weights for AMX, AVX2 or
    NEON kernels). "auto" turns them off when the llama.cpp build uses AMX, whose buffers crash
    multi-token decodes (llama.cpp issue 20824), and keeps llama.cpp's default elsewhere.
    `timeout_seconds`: the longest the worker may stay silent (loading, reading the prompt,
    between two tokens) before it is considered hung, stopped and restarted.
    """

    tier: Literal["local"]
    enabled: bool = True
    path: str | None = None
    package: str | None = None
    file: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    api_base: str | list[str] | None = None
    remote_model: str | None = None
    api_key_env: str | None = None
    # A pool endpoint that fails is left out this long (doubling each time it fails again, at
    # most 10 minutes), then probed (GET /v1/models) before it gets requests again.
    eject_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # 5xx/429 answers in a row that eject an endpoint (one that cannot be reached: at once).
    eject_after: Annotated[int, Field(ge=1, le=100)] = 3
    n_ctx: Annotated[int, Field(ge=128, le=1_048_576)] = 2048
    n_threads: Annotated[int, Field(ge=1, le=512)] | None = None
    n_gpu_layers: Annotated[int, Field(ge=-1)] = 0
    chat_format: str | None = None
    max_score: Annotated[float, Field(ge=0, le=1)] = 0.25
    # The task categories (router.types.CATEGORIES) the score may send to it; any other
    # request reaches it only as a fallback (no cloud usable, the cloud failed). Unset: all.
    categories: list[Literal[CATEGORIES]] | None = None  # type: ignore[valid-type]
    supports_tools: bool = False
    supports_json: bool = False
    supports_vision: bool = False
    # An embedding model (POST /v1/embeddings, /api/embed): loaded in llama.cpp's embedding
    # mode, one vector a text; it answers no chat.
    embeddings: bool = False
    # The most tokens one embedding request may hold (each text at most n_ctx): more is a
    # 413. Sized so that a full request ends within [retry] deadline_seconds (60) on the
    # shipped model, which reads ~100 tokens/s on one thread of a 2-core CPU
    # (scripts/bench_embeddings.py); raise it for a GPU or a faster CPU.
    max_embedding_tokens: Annotated[int, Field(ge=1, le=10_000_000)] = 4096
    max_queue: Annotated[int, Field(ge=1, le=10_000)] = 16
    # The most chat requests one user may have in flight here (queued or answered): a 429
    # past it, so one user cannot hold the only worker. Unset: max_queue for everyone.
    max_parallel: Annotated[int, Field(ge=1, le=10_000)] | None = None
    # Host memory for recent conversations' KV states (backends/prompt_cache.py); 0: off.
    kv_cache_mb: Annotated[int, Field(ge=0, le=1_048_576)] = 256
    extra_buffers: Literal["auto"] | bool = "auto"
    timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    price: Price | None = None

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        return _env_name(value)

    @field_validator("extra_buffers", mode="before")
    @classmethod
    def _extra_buffers(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, bool):
            raise ValueError('must be "auto", true or false')
        return value

    @model_validator(mode="after")
    def _one_source(self) -> LocalModel:
        sources = [
            name
            for name, given in (
                ("path", self.path is not None),
                ("package + file", self.package is not None or self.file is not None),
                ("hf_repo + hf_file", self.hf_repo is not None or self.hf_file is not None),
                (
                    "api_base + remote_model",
                    self.api_base is not None or self.remote_model is not None,
                ),
            )
            if given
        ]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one model source: path, package + file, hf_repo + hf_file, or "
                "api_base + remote_model" + (f" (got {' and '.join(sources)})" if sources else "")
            )
        if (self.package is None) != (self.file is None):
            raise ValueError("'package' and 'file' go together")
        if (self.hf_repo is None) != (self.hf_file is None):
            raise ValueError("'hf_repo' and 'hf_file' go together")
        if (self.api_base is None) != (self.remote_model is None):
            raise ValueError("'api_base' and 'remote_model' go together")
        if self.api_key_env is not None and self.api_base is None:
            raise ValueError("'api_key_env' is for a remote model (api_base + remote_model)")
        bases = self.endpoints()
        if self.api_base is not None and not bases:
            raise ValueError("'api_base' lists no URL")
        for base in bases:
            if not _URL.match(base):
                raise ValueError(f"api_base {base[:80]!r} is not an http(s) URL")
        if len(set(bases)) != len(bases):
            raise ValueError("api_base lists the same URL twice")
        return self

    @property
    def remote(self) -> bool:
        """Served by an OpenAI-compatible server rather than run here."""
        return self.api_base is not None

    def endpoints(self) -> list[str]:
        """The servers' `/v1` URLs, without a trailing slash."""
        bases = [self.api_base] if isinstance(self.api_base, str) else list(self.api_base or [])
        return [b.rstrip("/") for b in bases]

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class CloudModel(_Strict):
    """A provider model called through LiteLLM (`litellm_model` is LiteLLM's model id).

    Secrets never live here: `api_key_env` names the environment variable that holds the key.
    The model is usable only when that variable is set (or when it is omitted, for keyless
    servers such as Ollama).
    """

    tier: Literal["cloud"]
    enabled: bool = True
    litellm_model: str
    api_key_env: str | None = None
    api_base: str | None = None
    api_base_env: str | None = None
    n_ctx: Annotated[int, Field(ge=128)] | None = None
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0
    supports_tools: bool = True
    supports_json: bool = True
    supports_vision: bool = False  # image parts in messages (gpt-4o, claude-3 and later: true)
    embeddings: bool = False  # an embedding model (text-embedding-3-small...): no chat
    # The client APIs this model takes as they come (router.backends.native): unset, Anthropic
    # models take Anthropic's Messages; [] translates every request to chat.
    native_apis: list[Literal["messages"]] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    price: Price | None = None

    @field_validator("api_key_env", "api_base_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _env_name(value)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def resolved_api_base(self) -> str | None:
        if self.api_base_env and os.environ.get(self.api_base_env):
            return os.environ[self.api_base_env]
        return self.api_base

    def speaks(self, api: str) -> bool:
        """Whether a request of `api` goes to this model as it came (no translation)."""
        if self.native_apis is not None:
            return api in self.native_apis
        return api == "messages" and self.litellm_model.startswith("anthropic/")


ModelConfig = Annotated[LocalModel | CloudModel, Field(discriminator="tier")]


class Team(_Strict):
    users: list[str]


class Config(_Strict):
    router: RouterSettings = RouterSettings()
    quality: QualitySettings = QualitySettings()
    shared: SharedSettings = SharedSettings()
    cache: CacheSettings = CacheSettings()
    ledger: LedgerSettings = LedgerSettings()
    retry: RetrySettings = RetrySettings()
    server: ServerSettings = ServerSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    teams: dict[str, Team] = Field(default_factory=dict)
    # Names clients send (an agent's "claude-opus-5-5", "gpt-5-codex") → a mode or a model of
    # this file. Keys are glob patterns ("claude-*"); the first that matches wins.
    aliases: dict[str, str] = Field(default_factory=dict)
    budgets: list[Budget] = Field(default_factory=list)
    limits: list[RateLimit] = Field(default_factory=list)  # [[limits]]: rpm and tpm
    agents: AgentSettings | None = None  # [agents]: scenario routes (engine.agents)
    alerts: AlertSettings | None = None  # [alerts]: events as they happen
    models: dict[str, ModelConfig]
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _judge(self) -> Config:
        q = self.quality
        if q.shadow_rate > 0 and q.judge is None:
            raise ValueError(
                "quality.shadow_rate is above 0 but no judge is named: set quality.judge to a "
                "model of this file (a strong cloud model)"
            )
        if q.judge is not None and q.judge not in self.models:
            raise ValueError(
                f"quality.judge {q.judge!r} is not a model of this file (models: "
                f"{', '.join(self.models)})"
            )
        if q.judge is not None and not self.models[q.judge].enabled:
            raise ValueError(
                f"quality.judge {q.judge!r} is disabled: set enabled = true under "
                f"[models.{q.judge}] or name another judge"
            )
        return self

    @model_validator(mode="after")
    def _scopes(self) -> Config:
        check_scopes(self.budgets, self.limits, [*self.teams], [*ROUTING_MODES, *self.models])
        return self

    @model_validator(mode="after")
    def _aliases(self) -> Config:
        named = [(f"aliases.{p!r}", t) for p, t in self.aliases.items()]
        if self.agents is not None:
            named += [(f"agents.{k}", t) for k, t in self.agents.routes().items()]
        for where, target in named:
            if target not in ROUTING_MODES and target not in self.models:
                raise ValueError(
                    f"{where} = {target!r}: give auto, local, cloud or a model of "
                    f"this file (models: {', '.join(self.models)})"
                )
        return self

    def resolve(self, name: str) -> str:
        """The mode or model a requested name means: itself when it is one, else the target
        of the first alias whose pattern matches it, else itself (unknown: the policy says
        so)."""
        if name in ROUTING_MODES or name in self.models:
            return name
        for pattern, target in self.aliases.items():
            if fnmatch.fnmatchcase(name, pattern):
                return target
        return name

    def for_serving(self, exposed: bool) -> Config:
        """This configuration as `router serve` runs it: an unset [cache] scope is per user
        when the server is exposed (API keys required), shared on loopback."""
        if self.cache.scope is not None:
            return self
        scope = "user" if exposed else "shared"
        return self.model_copy(update={"cache": self.cache.model_copy(update={"scope": scope})})

    def fingerprint(self) -> str:
        """Which file, as read: `router chat` uses a server only if it runs the same one."""
        where = self.source.resolve() if self.source else None
        text = f"{where}\0{self.model_dump_json(exclude={'cache'})}"  # serve sets its scope
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def teams_of(self, user: str | None) -> list[str]:
        return [
            name for name, team in self.teams.items() if user is not None and user in team.users
        ]

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, Any]) -> dict[str, Any]:
        if not models:
            raise ValueError("configure at least one model under [models.NAME]")
        for name in models:
            if name in ROUTING_MODES:
                raise ValueError(f"{name!r} is a routing mode and cannot name a model")
        return models

    def enabled(self) -> dict[str, LocalModel | CloudModel]:
        """Enabled models, cheapest tier first, in file order within a tier."""
        ordered = sorted(self.models.items(), key=lambda kv: kv[1].tier != "local")
        return {name: m for name, m in ordered if m.enabled}

    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def cache_dir(self) -> Path:
        if self.cache.dir:
            return self._resolve(self.cache.dir)
        return Path(platformdirs.user_cache_dir(APP_NAME)) / "responses"

    def ledger_path(self) -> Path:
        if self.ledger.path:
            return self._resolve(self.ledger.path)
        return Path(platformdirs.user_data_dir(APP_NAME)) / "ledger.sqlite3"

    def ledger_where(self) -> str:
        """Where the ledger is, as people read it: the PostgreSQL database (credentials left
        out) when [ledger] url or $ROUTER_DATABASE_URL names one, else the SQLite file."""
        url = self.ledger.resolved_url()
        if url:
            return f"PostgreSQL {safe_url(url)}"
        return str(self.ledger_path())

    def estimator_path(self) -> Path | None:
        """The learned estimator file `[router] estimator` names (relative to models.toml)."""
        return self._resolve(self.router.estimator) if self.router.estimator else None

    def governance_path(self) -> Path:
        """Budget reservations and `router budget set` limits live beside the ledger."""
        return self.ledger_path().with_name("governance.sqlite3")

    def keys_path(self) -> Path:
        if self.server.keys_path:
            return self._resolve(self.server.keys_path)
        return Path(platformdirs.user_data_dir(APP_NAME)) / "keys.sqlite3"

    def _resolve(self, value: str) -> Path:
        path = Path(os.path.expandvars(value)).expanduser()
        return path if path.is_absolute() else self.base_dir() / path


def shipped_default_path() -> Path:
    """The models.toml shipped in the wheel (or the checkout's, when running from source)."""
    here = Path(__file__).resolve().parent.parent  # router/
    packaged = here / "_default_models.toml"
    return packaged if packaged.exists() else here.parent / "models.toml"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (given with --config)")
        return path
    env = os.environ.get(ENV_CONFIG)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (from ${ENV_CONFIG})")
        return path
    for candidate in (
        Path.cwd() / "models.toml",
        Path(platformdirs.user_config_dir(APP_NAME)) / "models.toml",
    ):
        if candidate.is_file() and not is_shipped_default(candidate):
            return candidate
    return shipped_default_path()


def is_shipped_default(path: Path) -> bool:
    """Whether `path` is the project's own shipped models.toml (a clone's root, where the
    Quickstart runs, holds it), or a copy of it word for word: the defaults, never a user's
    file, so the lookup goes on to the user's config (what `router init` wrote)."""
    shipped = shipped_default_path()
    try:
        return path.resolve() == shipped.resolve() or path.read_bytes() == shipped.read_bytes()
    except OSError:
        return False


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, parse and validate models.toml; raise ConfigError naming file, key and expectation."""
    source = find_config(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    return parse_toml(text, source)


def parse_toml(text: str, source: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source or 'config'}: not valid TOML: {exc}") from exc
    return parse_config(_extended(data, source), source)


def _extended(data: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """A file with `extends = "default"` is laid over the shipped models.toml, table by table
    and key by key (`[models.smollm2] enabled = false` turns one shipped model off, a new
    `[models.x]` adds one); without it a file replaces the shipped one whole."""
    if "extends" not in data:
        return data
    extends = data.pop("extends")
    if extends != "default":
        raise ConfigError(
            f"{source or 'config'}: extends = {str(extends)[:40]!r}: the only base is "
            '"default" (the shipped models.toml); remove the key to replace it whole'
        )
    base = tomllib.loads(shipped_default_path().read_text(encoding="utf-8"))
    return _merged(base, data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    try:
        if "source" in data:  # where the file was found, never a key in it
            raise ConfigError(f"{source or 'config'}: invalid configuration\n  source: unknown key")
        config = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(describe(exc, source)) from None
    return config
