"""Model backends: one seam, `Backend`, that local and cloud models (and test doubles) implement.

`local.py` supervises local models, each run by llama.cpp in a worker process
(`worker.py` talks to it, `llama_process.py` is it and the only importer of llama_cpp);
`cloud.py` is the only importer of litellm, on first use. So `import router` stays fast.
`FunctionBackend` (function.py) answers with a Python function: the public test double.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from router.types import ChatRequest


class Backend(Protocol):
    """Produces OpenAI-shaped chat completions for one configured model.

    `complete` returns a `chat.completion` dict with `usage`. `stream` yields
    `chat.completion.chunk` dicts and ends with a chunk whose `choices` is empty and whose
    `usage` counts the whole exchange. Failures raise router.errors.BackendError.
    """

    name: str

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]: ...


@runtime_checkable
class Embedder(Protocol):
    """An embedding model (`embeddings = true`): one vector a text, and the tokens read.
    `dimensions`, when given, is the vectors' size the client wants: a model that cannot give
    it raises RequestError before it does any work. `truncate`: the client asked for a text
    longer than the model reads to be cut to what it reads (Ollama's `truncate: true`);
    otherwise such a text is a RequestError."""

    name: str

    def embed(
        self, texts: list[str], dimensions: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]: ...


from router.backends.function import FunctionBackend  # noqa: E402 (after Backend: it is one)

__all__ = ["Backend", "FunctionBackend"]
