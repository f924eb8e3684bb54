"""Low-value requests: clear waste that should never reach a paid model.

- `trivial-document`: summarise, rewrite or translate a document that is empty or a few words.
  A follow-up without a document of its own ("And in French?", "Now shorten that") works on
  the conversation before it, which is its document.
- `repeat`: the same user sending the same request `repeat_threshold` times within
  `repeat_window_seconds` (a retry storm).

Blank messages are refused earlier (400: nothing to answer). What happens to flagged requests
is `guardrails.low_value` in models.toml: allow, local (default) or block.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import replace

from router.config import Config
from router.errors import NoRouteError, RequestError
from router.types import ChatRequest, Decision, message_text, sample

DOCUMENT_TASKS = frozenset({"summarise", "rewrite", "translate"})
_INSTRUCTION = re.compile(
    r"\b(please|can|could|would|you|kindly|summar\w*|tl;?dr|sum|up|rewrite|re-write|rephrase|"
    r"reword|paraphrase|proofread|fix|improve|polish|translate|translation|into|to|in|"
    r"english|french|spanish|german|this|that|the|following|text|document|doc|page|article|"
    r"paragraph|email|file|below|above|it|for|me|of|a|an|and|grammar|spelling)\b",
    re.I,
)
TRIVIAL_WORDS = 3


def document_words(text: str) -> tuple[int, bool]:
    """Words of the document a summarise/rewrite/translate request carries, and whether it
    attaches one explicitly.

    The document is what follows the instruction (after a colon or a line break); without one,
    whatever is left once instruction words are removed."""
    for separator in (":", "\n"):
        _, found, tail = text.partition(separator)
        if found:
            return len(re.findall(r"\w+", tail)), True
    return len(re.findall(r"\w+", _INSTRUCTION.sub(" ", text))), False


def _earlier_words(request: ChatRequest, enough: int) -> int:
    """Words in the messages before the last user message, counted up to `enough`."""
    users = [i for i, m in enumerate(request.messages) if m["role"] == "user"]
    count = 0
    for message in request.messages[: users[-1] if users else 0]:
        if message["role"] in ("system", "developer"):
            continue  # instructions to the model, not a document
        count += len(re.findall(r"\w+", sample(message_text(message), 2_000)))
        if message.get("tool_calls") or count >= enough:
            return max(count, enough)
    return count


def trivial_document(request: ChatRequest, category: str) -> bool:
    """A summarise/rewrite/translate request whose document is empty or a few words. A short
    instruction with no document attached, after an exchange, is about that exchange (translate
    the last answer, shorten it): not trivial. An explicitly attached blank ("Summarise this:")
    is trivial wherever it comes."""
    if category not in DOCUMENT_TASKS:
        return False
    words, attached = document_words(sample(request.last_user_text))
    if words >= TRIVIAL_WORDS:
        return False
    return attached or _earlier_words(request, TRIVIAL_WORDS) < TRIVIAL_WORDS


class RepeatDetector:
    """Counts identical answered requests per user in a sliding window (in process; a shared
    store such as Redis can replace it for several router processes).

    Only answers count: a client retrying a request that failed (an SDK's automatic retries
    after a 503, a user pressing enter again after a timeout) is not repeating anything."""

    def __init__(self, window_seconds: float, threshold: int) -> None:
        self.window = window_seconds
        self.threshold = threshold
        self._answered: dict[tuple[str | None, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def repeated(self, user: str | None, key: str, now: float | None = None) -> bool:
        """True when answering this request again would make `threshold` identical answers
        within the window."""
        if self.window <= 0:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._answered.get((user, key))
            if not times:
                return False
            while times and now - times[0] > self.window:
                times.popleft()
            return self.reached(len(times))

    def reached(self, count: int) -> bool:
        """Whether one more answer after `count` in the window makes a storm."""
        return count + 1 >= self.threshold

    def answered(self, user: str | None, key: str, now: float | None = None) -> None:
        """Count one answer (from a model or the cache) to the request `key` of `user`."""
        if self.window <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._answered[(user, key)]
            while times and now - times[0] > self.window:
                times.popleft()
            times.append(now)
            if len(self._answered) > 100_000:  # bound memory: forget the oldest keys
                for old in list(self._answered)[:50_000]:
                    del self._answered[old]


def guard(config: Config, request: ChatRequest, decision: Decision) -> Decision:
    """Apply guardrails.low_value to a request flagged as low-value."""
    if not decision.flags or config.guardrails.low_value == "allow":
        return decision
    what = f"low-value request ({', '.join(decision.flags)})"
    if config.guardrails.low_value == "block":
        refused = RequestError(
            f"{what} refused (guardrails.low_value = block): send the document itself, "
            "or stop repeating the same request",
            param="messages",
        )
        refused.refusal = "guardrail"
        raise refused
    local = tuple(n for n in decision.candidates if config.models[n].tier == "local")
    if not local:
        asked = (
            "no local model can serve it"
            if request.model == "auto"
            else f"{request.model!r} was asked for: ask with model 'auto' or 'local'"
        )
        kept = NoRouteError(f"{what} is kept off the cloud (guardrails.low_value = local); {asked}")
        kept.refusal = "guardrail"
        raise kept
    return replace(decision, candidates=local, reason=f"{decision.reason}; {what}: kept local")
