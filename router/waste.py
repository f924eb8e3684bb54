"""Low-value requests: clear waste that should never reach a paid model.

- `trivial-document`: summarise, rewrite or translate a document that is empty or a few words.
- `repeat`: the same user sending the same request `repeat_threshold` times within
  `repeat_window_seconds` (a retry storm).

Blank messages are refused earlier (400: nothing to answer). What happens to flagged requests
is `guardrails.low_value` in models.toml: allow, local (default) or block.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict, deque

from router.types import ChatRequest, message_text

DOCUMENT_TASKS = frozenset({"summarise", "rewrite", "translate"})
_INSTRUCTION = re.compile(
    r"\b(please|can|could|would|you|kindly|summar\w*|tl;?dr|sum|up|rewrite|re-write|rephrase|"
    r"reword|paraphrase|proofread|fix|improve|polish|translate|translation|into|to|in|"
    r"english|french|spanish|german|this|that|the|following|text|document|doc|page|article|"
    r"paragraph|email|file|below|above|it|for|me|of|a|an|and|grammar|spelling)\b",
    re.I,
)
TRIVIAL_WORDS = 3


def document_words(text: str) -> int:
    """Words of the document a summarise/rewrite/translate request carries.

    The document is what follows the instruction (after a colon or a line break); without one,
    whatever is left once instruction words are removed."""
    for separator in (":", "\n"):
        _, found, tail = text.partition(separator)
        if found:
            return len(re.findall(r"\w+", tail))
    return len(re.findall(r"\w+", _INSTRUCTION.sub(" ", text)))


def trivial_document(request: ChatRequest, category: str) -> bool:
    if category not in DOCUMENT_TASKS:
        return False
    users = [message_text(m) for m in request.messages if m["role"] == "user"]
    return document_words(users[-1] if users else "") < TRIVIAL_WORDS


class RepeatDetector:
    """Counts identical requests per user in a sliding window (in process; a shared store such
    as Redis can replace it for several router processes)."""

    def __init__(self, window_seconds: float, threshold: int) -> None:
        self.window = window_seconds
        self.threshold = threshold
        self._seen: dict[tuple[str | None, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def seen(self, request: ChatRequest, now: float | None = None) -> bool:
        """Record this request; True when it is at least the threshold-th in the window."""
        if self.window <= 0:
            return False
        now = time.monotonic() if now is None else now
        key = hashlib.sha256(
            json.dumps([request.messages, request.params], sort_keys=True, default=str).encode()
        ).hexdigest()
        with self._lock:
            times = self._seen[(request.user, key)]
            while times and now - times[0] > self.window:
                times.popleft()
            times.append(now)
            if len(self._seen) > 100_000:  # bound memory: forget the oldest keys
                for old in list(self._seen)[:50_000]:
                    del self._seen[old]
            return len(times) >= self.threshold


def flags(request: ChatRequest, category: str, repeats: RepeatDetector) -> list[str]:
    found = []
    if trivial_document(request, category):
        found.append("trivial-document")
    if repeats.seen(request):
        found.append("repeat")
    return found
