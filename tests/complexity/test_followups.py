"""Follow-ups are scored by what is asked now (router.complexity.followups)."""

from __future__ import annotations

from router.complexity import default_estimator
from router.complexity.followups import TURNS, conversation_score
from router.types import ChatRequest, Message
from tests.conftest import HARD_PROMPT

estimator = default_estimator()


def chat(*turns: str) -> ChatRequest:
    messages: list[Message] = []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return ChatRequest(messages)


def test_a_trivial_follow_up_to_small_talk_stays_as_trivial_as_it_is() -> None:
    for question in ("What is my name?", "What's 2+2?"):
        alone = estimator.score(chat(question))
        follow_up = chat("Hi, I'm Ana.", "Nice to meet you, Ana! How can I help you?", question)
        # Scored as one text, the exchange made the question look hard (0.43 and 0.37).
        assert estimator.score(follow_up) > 0.25
        assert conversation_score(estimator, follow_up) == alone < 0.05


def test_a_follow_up_to_a_hard_task_keeps_most_of_its_score() -> None:
    task = estimator.score(chat(HARD_PROMPT))
    follow_up = chat(HARD_PROMPT, "def f(x): return x", "Now do it in Rust.")
    assert estimator.score(chat("Now do it in Rust.")) < 0.25
    assert conversation_score(estimator, follow_up) == round(0.8 * task, 4) > 0.25


def test_a_long_chat_of_small_asks_stays_small() -> None:
    asks = ["What time is it in Tokyo?", "Set a timer for ten minutes", "What's 12 times 3?"]
    turns = [t for ask in asks * 5 for t in (ask, "Sure, here you are.")][:-1]
    assert conversation_score(estimator, chat(*turns)) < 0.2
    assert estimator.score(chat(*turns)) > 0.5  # what scoring the whole text did


def test_a_hard_ask_further_back_than_the_window_no_longer_counts() -> None:
    turns = [HARD_PROMPT, "ok"] + ["Thanks!", "You're welcome."] * TURNS + ["Bye"]
    assert conversation_score(estimator, chat(*turns)) < 0.1


def test_a_single_ask_and_the_system_prompt() -> None:
    single = ChatRequest(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HARD_PROMPT}]
    )
    assert conversation_score(estimator, single) == estimator.score(single)
