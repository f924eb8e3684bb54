"""The worker's loop guard: a small model that says the same thing again and again is stopped
instead of running to max_tokens. Loaded by the worker by path
(router/backends/llama_process.py): stdlib only.
"""

from __future__ import annotations

LOOP_MIN_SPAN = 32  # tokens: a loop is found once its repeats cover this many
LOOP_MAX_BLOCK = 64  # tokens: the longest repeated block looked for
LOOP_REPEATS = 3  # a block repeated at least this many times in a row
LOOP_CHECK_EVERY = 4  # tokens between two checks


def looping(tokens: list[int]) -> bool:
    """Whether the answer's last tokens repeat one block of 1 to LOOP_MAX_BLOCK tokens at
    least LOOP_REPEATS times in a row, over LOOP_MIN_SPAN tokens or more ("la Femme la Femme
    la Femme…", a sentence said again and again): a small model's loop, which would otherwise
    run to max_tokens."""
    for block in range(1, LOOP_MAX_BLOCK + 1):
        span = max(LOOP_MIN_SPAN, LOOP_REPEATS * block)
        if span > len(tokens):
            break
        tail = tokens[-span:]
        if tail[block:] == tail[:-block]:  # periodic with this block
            return True
    return False
