"""Files inside installed packages, found without importing them (the shipped model's
GGUF, LiteLLM's price map)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, file: str) -> Path | None:
    """A file inside an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / file
        if candidate.is_file():
            return candidate
    return None
