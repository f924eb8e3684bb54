"""What the policy sees of each enabled model, checked at every request: a cloud model without
its key, a local model without its GGUF file (looked at no more than once a second), a local
worker that is down or restarting. What does not change (context windows, capabilities) is
worked out once per config."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TypeGuard, runtime_checkable

from router.backends import Backend
from router.config import CloudModel, Config, LocalModel
from router.config.model_files import local_path, local_problem
from router.engine.policy import ModelView
from router.ledger.pricing import context_window, output_limit


@runtime_checkable
class Supervised(Protocol):
    """A backend that knows when it cannot serve (a local worker down, a pool all ejected)."""

    def unusable(self) -> str | None: ...

    def unusable_public(self) -> str | None: ...

    def seconds_until_usable(self) -> float: ...


class Availability:
    def __init__(self, config: Config, backends: Mapping[str, Backend]) -> None:
        self._config = config
        self._backends = backends  # the router's own (and growing) map of backends
        # Where each local GGUF is, found once (locating a package's file costs ~0.1 ms).
        self.local_paths: dict[str, Path | None] = {
            name: local_path(config, m)
            for name, m in config.enabled().items()
            if isinstance(m, LocalModel)
        }
        self._hub_found: set[str] = set()  # hub models found in the Hugging Face cache
        self._static: dict[str, tuple[LocalModel | CloudModel, ModelView]] = {}
        self._file_seen: dict[str, float] = {}  # a local file last found there, when

    def views(self, config: Config | None = None) -> dict[str, ModelView]:
        """Each enabled model of `config` (default: the one given at creation)."""
        config = config or self._config
        return {name: self.view(name, m) for name, m in config.enabled().items()}

    def view(self, name: str, model: LocalModel | CloudModel) -> ModelView:
        static = self._static_view(name, model)
        unusable: str | None = None
        shown: str | None = None  # in words a client may read (RouterError.public)
        retry_after: float | None = None
        if isinstance(model, CloudModel):
            if model.api_key_env and not os.environ.get(model.api_key_env):
                unusable = shown = f"{model.api_key_env} is not set"  # a setting's name
        else:
            backend = self._backends.get(name)
            unusable = self.file_problem(name, model)
            shown = "its model file is missing"
            if unusable is None and backend is not None and _supervised(backend):
                unusable = backend.unusable()
                if unusable is not None:
                    retry_after, shown = backend.seconds_until_usable(), backend.unusable_public()
        if unusable is None:
            return static
        return replace(static, unusable=unusable, retry_after=retry_after, unusable_public=shown)

    def _static_view(self, name: str, model: LocalModel | CloudModel) -> ModelView:
        """The model as the policy sees it while usable: worked out once per config (the
        pricing tables' context windows and output limits, the capabilities)."""
        known = self._static.get(name)
        if known is not None and known[0] is model:
            return known[1]
        max_output = None
        if isinstance(model, CloudModel):
            n_ctx = model.n_ctx or context_window(model.litellm_model)
            max_output = output_limit(model.litellm_model)
        else:
            n_ctx = model.n_ctx
        view = ModelView(
            name=name,
            tier=model.tier,
            max_score=model.max_score,
            n_ctx=n_ctx,
            supports_tools=model.supports_tools,
            supports_json=model.supports_json,
            supports_vision=model.supports_vision,
            max_output=max_output,
            embeddings=model.embeddings,
            categories=tuple(model.categories)
            if isinstance(model, LocalModel) and model.categories
            else None,
        )
        self._static[name] = (model, view)  # a reloaded config's model replaces it
        return view

    def file_problem(self, name: str, model: LocalModel) -> str | None:
        """Why the model's GGUF file is not there: a file found is looked for again a second
        later at the earliest (a stat per request was a twentieth of a cache hit's time); a
        hub model, once found in the cache, is not looked for again."""
        if name in self._hub_found:
            return None
        now = time.monotonic()
        if now - self._file_seen.get(name, -2.0) < 1.0:
            return None
        path = self.local_paths.get(name)
        if path is not None and path.is_file():
            self._file_seen[name] = now
            return None
        problem = local_problem(self._config, name, model)
        if problem is None and model.hf_repo is not None:
            self._hub_found.add(name)
        return problem


_SUPERVISED: dict[type, bool] = {}


def _supervised(backend: Backend) -> TypeGuard[Supervised]:
    """isinstance(backend, Supervised), known by its class (a protocol check walks the
    class's attributes every time: a fiftieth of a cache hit)."""
    kind = type(backend)
    known = _SUPERVISED.get(kind)
    if known is None:
        known = _SUPERVISED[kind] = isinstance(backend, Supervised)
    return known
