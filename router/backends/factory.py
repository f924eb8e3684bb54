"""The backend for a configured model: a supervised GGUF worker, a remote OpenAI-compatible
server (pool), or a cloud model through LiteLLM with retries. Created on first use."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from router.backends import Backend
from router.backends.local import LocalBackend
from router.backends.retry import Retrying
from router.config import Config, LocalModel


def create_backend(
    config: Config,
    name: str,
    loading: Callable[[str], AbstractContextManager[object]] | None,
    sleep: Callable[[float], None],
) -> Backend:
    model = config.models[name]
    if isinstance(model, LocalModel) and model.remote:
        from router.backends.remote import RemoteBackend

        return RemoteBackend(name, model)
    if isinstance(model, LocalModel):
        return LocalBackend(config, name, model, loading)
    from router.backends.cloud import CloudBackend

    return Retrying(CloudBackend(name, model), config.retry, sleep)
