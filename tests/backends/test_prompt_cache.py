"""The worker's saved conversations (router/backends/prompt_cache.py), on a fake context that
records what llama.cpp would be asked: which state is put back, what is saved, what is cut.
The real context is in tests/backends/test_conversations.py."""

from __future__ import annotations

from typing import Any

from router.backends.prompt_cache import Conversations, common_prefix, reusable

BYTES_PER_TOKEN = 100


class FakeContext:
    """A context whose KV state is its token list; a state costs BYTES_PER_TOKEN a token."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.saves = 0
        self.restores = 0
        self.refuse = False

    def live(self) -> list[int]:
        return list(self.tokens)

    def save(self) -> tuple[Any, int] | None:
        self.saves += 1
        return list(self.tokens), len(self.tokens) * BYTES_PER_TOKEN

    def restore(self, state: Any, tokens: list[int]) -> bool:
        assert state == tokens
        self.restores += 1
        if self.refuse:
            self.tokens = []
            return False
        self.tokens = list(state)
        return True

    def truncate(self, n: int) -> list[int]:
        del self.tokens[n:]
        return self.live()

    def read(self, kv: Conversations, prompt: list[int], answer: int = 5) -> int:
        """One generation as llama-cpp-python runs it: prepare, read the rest of the prompt
        (the context keeps the shared prefix), then the answer's tokens."""
        reused = kv.prepare(prompt)
        assert reusable(self.tokens, prompt) == reused  # what llama-cpp-python then keeps
        self.tokens = list(prompt) + [9000 + i for i in range(answer)]
        return reused


def conversation(n: int, length: int = 100) -> list[int]:
    """A system prompt of `length` tokens of its own, and a first user turn."""
    return [n * 1000 + i for i in range(length)] + [7, 7]


def test_common_prefix_across_block_edges() -> None:
    a = list(range(2000))
    assert common_prefix(a, a) == 2000
    assert common_prefix(a, a[:700]) == 700
    assert common_prefix(a, [*a[:513], -1]) == 513
    assert common_prefix([], a) == 0
    assert reusable(a[:10], a[:10]) == 9  # a prompt held whole: its last token read again
    assert reusable([1], [2, 3]) == 0


def test_an_interleaved_conversation_resumes_its_own_prefix() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**6)
    a1, b1 = conversation(1), conversation(2)
    assert ctx.read(kv, a1) == 0
    assert ctx.read(kv, b1) == 0  # A was kept before B replaced it
    assert ctx.saves == 1
    # A's follow-up: its first prompt, its answer (in the words of the next prompt), more.
    a2 = [*a1, 9000, 9001, 9002, 9003, 9004, 42, 43]
    assert ctx.read(kv, a2) == len(a1)  # A put back; only the answer and the turn are read
    assert ctx.restores == 1 and ctx.saves == 2  # B kept before A came back
    b2 = [*b1, 9000, 9001, 55, 56]
    assert ctx.read(kv, b2) == len(b1)
    stats = kv.stats()
    # A's first turn was dropped when its second was saved: one state a conversation.
    assert stats["conversations"] == 2
    assert sorted(s["tokens"] for s in stats["saved"]) == sorted([len(b1), len(a2)])


def test_a_continuation_is_not_copied_and_the_answer_is_read_again() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**6)
    a1 = conversation(1)
    ctx.read(kv, a1)
    a2 = [*a1, 9000, 9001, 9002, 9003, 9004, 42, 43]
    # The context held a1 and its answer: the answer, read one token at a time, is cut and
    # read again with the new prompt; the prompt itself is reused, and nothing is saved.
    assert ctx.read(kv, a2) == len(a1)
    assert ctx.saves == 0 and ctx.restores == 0


def test_a_shared_system_prompt_is_reused_and_each_conversation_kept() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**6)
    system = conversation(1)[:100]
    a1, b1, c1 = [*system, 1, 1], [*system, 2, 2], conversation(3)
    ctx.read(kv, a1)
    ctx.read(kv, c1)  # a1 kept
    assert ctx.read(kv, b1) == 100  # a1's state put back for its system prompt
    ctx.read(kv, c1)  # b1 kept: a1 still there (b1 does not hold a1's whole prompt)
    assert kv.stats()["conversations"] == 3
    assert ctx.read(kv, [*a1, 5, 6, 7]) == len(a1)


def test_the_budget_evicts_the_least_recently_used() -> None:
    ctx = FakeContext()
    one = 102 * BYTES_PER_TOKEN  # a conversation's state
    kv = Conversations(ctx, budget=2 * one + 50)
    convs = [conversation(n) for n in range(1, 6)]
    for c in convs:
        ctx.read(kv, c)
    stats = kv.stats()
    assert stats["conversations"] == 2 and kv.bytes <= kv.budget
    assert stats["evictions"] == 2  # 1 and 2 out; 3 and 4 kept; 5 live
    assert ctx.read(kv, convs[3] + [1, 2]) == len(convs[3])  # kept: put back
    assert ctx.read(kv, convs[0] + [1, 2]) == 0  # evicted: read again
    assert kv.bytes <= kv.budget


def test_the_entry_count_is_bounded_and_small_or_huge_states_are_not_kept() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**9, max_entries=3)
    for n in range(1, 8):
        ctx.read(kv, conversation(n))
    assert kv.stats()["conversations"] == 3
    tiny = FakeContext()
    small = Conversations(tiny, budget=10**9)
    tiny.read(small, [1, 2, 3, 4])  # shorter than MIN_TOKENS: not worth a copy
    tiny.read(small, conversation(2))
    assert tiny.saves == 0
    big = FakeContext()
    capped = Conversations(big, budget=50 * BYTES_PER_TOKEN)
    big.read(capped, conversation(1))
    big.read(capped, conversation(2))
    assert capped.stats()["conversations"] == 0  # larger than the whole budget


def test_two_tokens_are_always_read_so_logits_come_from_a_batch() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**6)
    a1 = conversation(1)
    ctx.read(kv, a1)
    ctx.read(kv, conversation(2))
    # The same prompt again (a retry without the response cache): its state is put back,
    # and the last two tokens are read again, never one alone.
    assert ctx.read(kv, a1) == len(a1) - 2


def test_a_refused_state_is_forgotten_and_the_prompt_read_whole() -> None:
    ctx = FakeContext()
    kv = Conversations(ctx, budget=10**6)
    a1 = conversation(1)
    ctx.read(kv, a1)
    ctx.read(kv, conversation(2))
    ctx.refuse = True
    assert ctx.read(kv, [*a1, 1, 2]) == 0
    assert kv.stats()["conversations"] == 1  # a1 forgotten; b kept
    kv.clear()
    assert kv.stats()["conversations"] == 0 and kv.bytes == 0
