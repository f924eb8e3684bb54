"""Whether the local worker loads weights into llama.cpp's extra buffer types: the choice, from
what the llama.cpp build says it supports. Loaded by the worker by path
(router/backends/llama_process.py), imported by `router models`: stdlib only.
"""

from __future__ import annotations

import re
from typing import Literal

ExtraBuffers = bool | Literal["auto"]

AMX_ISSUE = "llama.cpp issue 20824"


def parse_system_info(info: str) -> dict[str, str]:
    """llama.cpp's system info ("CPU : SSE3 = 1 | AVX = 1 | AMX_INT8 = 1 | ...") as a dict."""
    return {m[1]: m[2] for m in re.finditer(r"([A-Za-z0-9_]+)\s*=\s*([^|\s]+)", info)}


def choice(setting: ExtraBuffers, info: str) -> tuple[bool, str]:
    """Whether to load weights into llama.cpp's extra buffer types, and why.

    Extra buffer types are where llama.cpp repacks weights for a faster kernel: AMX tiles on
    Intel Sapphire Rapids and later, interleaved blocks for AVX2/NEON. On builds with AMX, any
    decode of two or more tokens at once crashes in the AMX matmul (SIGSEGV or SIGILL), so
    `auto` turns them off there and keeps llama.cpp's default everywhere else.
    """
    if setting is True:
        return True, "extra_buffers = true in models.toml"
    if setting is False:
        return False, "extra_buffers = false in models.toml"
    if parse_system_info(info).get("AMX_INT8") == "1":
        return False, (
            "auto: this llama.cpp build uses AMX (AMX_INT8 = 1), whose repacked weights crash "
            f"multi-token decodes ({AMX_ISSUE}); loaded without extra buffers"
        )
    return True, "auto: llama.cpp's default (no AMX in this build)"
