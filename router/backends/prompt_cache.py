"""The local worker's memory of conversations: the KV states of prompts it has read, kept in
host memory and put back when a later prompt starts with one of them.

llama.cpp can skip re-reading a prompt's prefix only while its context still holds that
prefix's KV cache, and a worker's context holds one token sequence: the last request's.
Another conversation's turn in between replaces it, and the follow-up would read its whole
history again (seconds a thousand tokens on a CPU). So, before a prompt is read:

- when the context holds a conversation the new prompt does not continue, its KV state is
  saved here first (`llama_state_seq_get_data`, llama-server's `--cache-ram` does the same);
- when a saved state shares a longer prefix with the new prompt than the context does, it is
  put back (`llama_state_seq_set_data`) and llama-cpp-python reads only the rest.

Why states in host memory and not one llama.cpp sequence per conversation in a shared context
(`llama_memory_seq_cp`, zero-copy, a shared prefix stored once): measured on the shipped
SmolLM2-135M with four 1,600-token conversations, the shared context's attention runs over
every cached cell, and decoding fell from 79 to 18 tokens/s (flash attention: 20), while
putting a 1,640-token state back takes 5 ms and saving it 16-27 ms. The price: a system prompt
that several conversations share is stored once for each of them.

Bounded by `budget` bytes of saved states (models.toml `kv_cache_mb`) and `MAX_ENTRIES`,
least recently used first out. A state the new one makes useless (its whole prompt is the new
one's beginning: a conversation's previous turn) is dropped when the new one is saved.

This file is loaded by the worker process by path (router/backends/llama_process.py imports
nothing of the router package) and by the tests as `router.backends.prompt_cache`: stdlib only.
The worker supplies what touches llama.cpp (`Engine`).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

MIN_TOKENS = 16  # a context shorter than this is quicker to read again than to keep
MAX_ENTRIES = 64  # saved states at most, whatever their size: bounds each request's scan


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = min(len(a), len(b))
    i, step = 0, 512
    while i < n:  # slices compare in C; the first differing block is then walked
        j = min(n, i + step)
        if a[i:j] != b[i:j]:
            while a[i] == b[i]:
                i += 1
            return i
        i = j
    return n


def reusable(live: Sequence[int], prompt: Sequence[int]) -> int:
    """Of `prompt`, the tokens llama-cpp-python takes from a context holding `live`: the
    shared prefix, less the last token of a prompt held whole (read again for its logits)."""
    here = common_prefix(live, prompt)
    return min(here, len(prompt) - 1) if here else 0


class Engine(Protocol):
    """What the worker's llama.cpp context offers the cache."""

    def live(self) -> list[int]:
        """The tokens the context holds now (its KV cache), in order."""
        ...

    def save(self) -> tuple[Any, int] | None:
        """The context's KV state and its size in bytes; None when it cannot be saved."""
        ...

    def restore(self, state: Any, tokens: list[int]) -> bool:
        """Put `state` (of `tokens`) back into the context, replacing what it holds; False
        when llama.cpp refused it (the context is then empty)."""
        ...

    def truncate(self, n: int) -> list[int]:
        """Forget all but the context's first `n` tokens; returns the tokens it then holds."""
        ...


@dataclass
class Saved:
    tokens: list[int]
    prompt: int  # how many of `tokens` were the prompt; the rest is the answer read after it
    state: Any
    size: int  # bytes
    used: float = field(default_factory=time.monotonic)
    restored: int = 0


class Conversations:
    """The saved states of one worker, and the choice made before each prompt is read."""

    def __init__(
        self,
        engine: Engine,
        budget: int,
        *,
        min_tokens: int = MIN_TOKENS,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._engine = engine
        self.budget = budget
        self._min = min_tokens
        self._max = max_entries
        self._saved: OrderedDict[int, Saved] = OrderedDict()  # least recently used first
        self._ids = itertools.count(1)
        self._live_prompt = 0  # of the context's tokens, how many were its last prompt
        self._live_from: int | None = None  # the state the context was put back from
        self.restores = 0
        self.saves = 0
        self.evictions = 0

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._saved.values())

    def prepare(self, prompt: list[int]) -> int:
        """Before `prompt` is read: keep what the context holds if `prompt` does not continue
        it, and put back the saved state that shares the longest prefix with `prompt` when
        that beats the context. Returns how many of the prompt's tokens need no reading.

        Only what was read as a prompt is reused, and at least two tokens are read: llama.cpp
        computes a batch of one token (each token of an answer, a prompt's last token read
        alone) with other kernels, whose KV values differ slightly from a prompt's. Reusing
        them changed answers at temperature 0; with this rule a resumed prompt gives the
        logits of a fresh read bit for bit. The previous answer is read again with the next
        prompt (a batch: 100 tokens/s on a CPU thread for the shipped model)."""
        live = self._engine.live()
        if len(live) > self._live_prompt:  # the answer's tokens: read one at a time
            live = self._engine.truncate(self._live_prompt)
        here = common_prefix(live, prompt)
        # A continuation holds the context's whole last prompt: nothing to keep.
        if here < len(live):
            self._keep(live)
        best, match = None, here
        for key, saved in self._saved.items():
            if (m := common_prefix(saved.tokens, prompt)) > match:
                best, match = key, m
        if best is not None and match - here >= self._min:
            saved = self._saved[best]
            self._saved.move_to_end(best)
            saved.used = time.monotonic()
            if self._engine.restore(saved.state, saved.tokens):
                saved.restored += 1
                self.restores += 1
                self._live_from, here = best, match
            else:  # refused: forget it, read the prompt from the start
                del self._saved[best]
                self._live_from, here = None, 0
        self._live_prompt = len(prompt)
        if here > len(prompt) - 2:  # leave two tokens to read (see above)
            here = max(0, len(prompt) - 2)
            self._engine.truncate(here)
        return here

    def _keep(self, live: list[int]) -> None:
        """Save the context's state, unless it is short, saved already or over the budget."""
        if len(live) < self._min:
            return
        source = self._saved.get(self._live_from) if self._live_from is not None else None
        if source is not None and source.tokens == live:
            return  # put back and not changed since
        got = self._engine.save()
        if got is None:
            return
        state, size = got
        if size > self.budget:
            return
        prompt = min(self._live_prompt, len(live))  # the whole of it, answers being cut off
        for key, saved in list(self._saved.items()):
            if common_prefix(saved.tokens, live) >= saved.prompt:  # an earlier turn of it
                del self._saved[key]
        while self._saved and (self.bytes + size > self.budget or len(self._saved) >= self._max):
            self._saved.popitem(last=False)
            self.evictions += 1
        self._saved[next(self._ids)] = Saved(list(live), prompt, state, size)
        self.saves += 1

    def clear(self) -> None:
        """Forget everything (after a failed decode: what the context holds is unknown)."""
        self._saved.clear()
        self._live_from = None
        self._live_prompt = 0

    def stats(self) -> dict[str, Any]:
        """What `router ps` and /health show: the saved conversations, newest first."""
        now = time.monotonic()
        saved = [
            {
                "tokens": len(s.tokens),
                "mb": round(s.size / 2**20, 1),
                "idle_s": round(now - s.used, 1),
                "restored": s.restored,
            }
            for s in reversed(self._saved.values())
        ]
        return {
            "conversations": len(saved),
            "mb": round(self.bytes / 2**20, 1),
            "budget_mb": round(self.budget / 2**20, 1),
            "restores": self.restores,
            "saves": self.saves,
            "evictions": self.evictions,
            "saved": saved,
        }
