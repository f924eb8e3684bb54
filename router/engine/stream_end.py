"""What follows a streamed answer, once its last chunk is out: account its usage, settle its
budget, record its row, and cache it and offer it to shadow judging when it is whole."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from router.backends.hangup import Hangup
from router.chunks import assemble, collect
from router.engine import policy
from router.engine.attempts import Attempts
from router.engine.bookkeeping import Books
from router.engine.cache import CachePolicy
from router.engine.shadow import Shadow
from router.errors import BackendError
from router.governance.budgets import Reservation
from router.types import ChatRequest, Routing


class StreamEnd:
    def __init__(
        self,
        account: Callable[[Routing, Mapping[str, Any]], None],
        attempts: Attempts,
        books: Books,
        cache: CachePolicy,
        shadow: Shadow,
    ) -> None:
        self._account = account
        self._attempts = attempts
        self._books = books
        self._cache = cache
        self.shadow = shadow

    def stream(
        self,
        request: ChatRequest,
        key: str,
        chunks: Iterator[dict[str, Any]],
        first: dict[str, Any] | None,
        routing: Routing,
        started: float,
        reservation: Reservation | None = None,
        hangup: Hangup | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Pass chunks through; at the end account, cache and record the whole answer."""
        text: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        calls: list[dict[str, Any]] = []  # the chunks that carry tool calls
        complete = False
        try:
            pending = [first] if first is not None else []
            for chunk in itertools.chain(pending, chunks):
                chunk = {**chunk, "id": routing.response_id}
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta", {})
                    text.append(delta.get("content") or "")
                    if delta.get("tool_calls"):
                        calls.append(chunk)
                    finish_reason = choice.get("finish_reason") or finish_reason
                usage = chunk.get("usage") or usage
                if "stopped" in chunk:  # the local model's loop guard cut the answer
                    chunk = {k: v for k, v in chunk.items() if k != "stopped"}
                    routing.loop_stopped()
                yield chunk
            # A backend that stopped for the client's hang-up ends its stream early, or gives
            # none: an answer cut short, never one to cache.
            complete = hangup is None or not hangup.cut
        except BackendError as exc:  # the model failed mid-answer (a worker crash, a cut)
            routing.note(f"; answer cut: {exc}", f"; answer cut: {exc.public}")
            raise
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # frees a local model for the next caller when the consumer stops
            if usage is None:
                # No usage from the backend (stopped early): count the chunks delivered and
                # estimate the prompt, and say so.
                usage = {
                    "prompt_tokens": policy.estimate_prompt_tokens(request),
                    "completion_tokens": sum(1 for t in text if t),
                }
                if complete:
                    routing.reason += " (tokens estimated)"
                elif hangup is not None and hangup.fired:
                    routing.reason += "; answer cut: client disconnected (tokens estimated)"
                else:
                    routing.reason += " (stream stopped before the end; tokens estimated)"
            self._account(routing, usage)
            self._attempts.settle(reservation, routing)
            answer = collect(calls, routing.model)["choices"][0]["message"]
            answer["content"] = "".join(text) or answer["content"]
            self._books.record(request, key, routing, started, stream=True, answer=answer)
            if complete and not calls and routing.saved_by != "looped":
                response = assemble(first, routing.model, "".join(text), finish_reason, usage)
                self._cache.set(request, key, response, routing)
                self.shadow.offer(request, routing, "".join(text))
