"""Rate limits' rules and sliding windows (router.governance.limits), on a clock the test
moves: what is admitted, what is refused, and when to retry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from router.config import Config, load_config
from router.errors import ConfigError, RateLimitedError
from router.governance.limits import MemoryLimits, Window, windows
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
