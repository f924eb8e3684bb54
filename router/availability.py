"""What the policy sees of each enabled model, checked at every request: a cloud model without
its key, a local model without its GGUF file, a local worker that is down or restarting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from router.backends import Backend
from router.config import CloudModel, Config, LocalModel
from router.model_files import local_path, local_problem
from router.policy import ModelView
from router.pricing import context_window, output_limit


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

    def views(self, config: Config | None = None) -> dict[str, ModelView]:
        """Each enabled model of `config` (default: the one given at creation)."""
        config = config or self._config
        return {name: self.view(name, m) for name, m in config.enabled().items()}

    def view(self, name: str, model: LocalModel | CloudModel) -> ModelView:
        unusable: str | None = None
        shown: str | None = None  # in words a client may read (RouterError.public)
        retry_after: float | None = None
        max_output = None
        if isinstance(model, CloudModel):
            n_ctx = model.n_ctx or context_window(model.litellm_model)
            max_output = output_limit(model.litellm_model)
            if model.api_key_env and not os.environ.get(model.api_key_env):
                unusable = shown = f"{model.api_key_env} is not set"  # a setting's name
        else:
            n_ctx = model.n_ctx
            backend = self._backends.get(name)
            unusable = self.file_problem(name, model)
            shown = "its model file is missing"
            if unusable is None and isinstance(backend, Supervised):
                unusable, retry_after = backend.unusable(), backend.seconds_until_usable()
                shown = backend.unusable_public()
        return ModelView(
            name=name,
            tier=model.tier,
            max_score=model.max_score,
            n_ctx=n_ctx,
            supports_tools=model.supports_tools,
            supports_json=model.supports_json,
            supports_vision=model.supports_vision,
            unusable=unusable,
            retry_after=retry_after if unusable else None,
            unusable_public=shown if unusable else None,
            max_output=max_output,
            embeddings=model.embeddings,
            categories=tuple(model.categories)
            if isinstance(model, LocalModel) and model.categories
            else None,
        )

    def file_problem(self, name: str, model: LocalModel) -> str | None:
        """Why the model's GGUF file is not there (a stat per request; a hub model, once
        found in the cache, is not looked for again)."""
        if name in self._hub_found:
            return None
        path = self.local_paths.get(name)
        if path is not None and path.is_file():
            return None
        problem = local_problem(self._config, name, model)
        if problem is None and model.hf_repo is not None:
            self._hub_found.add(name)
        return problem
