"""router: a local-first hybrid LLM router.

    from router import Router
    router = Router()
    print(router.complete([{"role": "user", "content": "Hello!"}]).text)

Importing this package is cheap: litellm loads on the first cloud call, and llama_cpp only ever
in the local models' worker processes.
"""

from router.config import Config, load_config
from router.engine.pipeline import Router
from router.errors import (
    BackendError,
    BusyError,
    CloudError,
    ConfigError,
    ModelLoadError,
    NoRouteError,
    RequestError,
    RouterError,
    UnavailableError,
    UnknownModelError,
)
from router.types import ChatRequest, Completion, CompletionStream, Decision, Routing

__all__ = [
    "BackendError",
    "BusyError",
    "ChatRequest",
    "CloudError",
    "Completion",
    "CompletionStream",
    "Config",
    "ConfigError",
    "Decision",
    "ModelLoadError",
    "NoRouteError",
    "RequestError",
    "Router",
    "RouterError",
    "Routing",
    "UnavailableError",
    "UnknownModelError",
    "load_config",
]

__version__ = "0.1.0"
