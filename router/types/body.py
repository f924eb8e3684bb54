"""Request bodies → JSON values, within limits, before any other work.

Python's json module accepts what no chat request needs and what breaks later stages: integers
of thousands of digits (slow to convert, and past what C code downstream can take), nesting deep
enough to exhaust the recursion limit, NaN and Infinity, and lone UTF-16 surrogates ("\\ud800")
that cannot be written to SQLite, a log or a socket as UTF-8. Each is refused here with one
line saying what is wrong, so that later stages only ever see clean values.

Most bodies are read by orjson, which refuses the same things (NaN and Infinity, numbers past a
double, lone surrogates) but turns an integer past 64 bits into a float: a body with a run of
20 digits, over MAX_DEPTH brackets, or one orjson refuses goes the careful way, which says
exactly what is wrong and where.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 64  # JSON schemas in tools and response_format nest; chat messages need ~6
MAX_INT_DIGITS = 20  # int64 (seed) has 19 digits
_LONG_NUMBER = re.compile(rb"\d{20}")  # orjson reads 2**64 and up as a float


class BodyError(ValueError):
    """The body is not JSON a chat request can be made of; the message says why and `param`
    names the field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyError(f"an integer of {len(text)} digits is too large (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BodyError(f"the number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not valid JSON; send a finite number")


def parse(raw: bytes) -> Any:
    """`raw` → a JSON value, or BodyError. Text must be UTF-8 (a BOM is not allowed)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH and not _LONG_NUMBER.search(raw):
        try:  # valid UTF-8 and Unicode, finite numbers: what the careful way checks
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the careful way says what is wrong
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"request body is not UTF-8 (byte {exc.start})") from None
    _check_depth(text)
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # pragma: no cover - _check_depth refuses this first
        raise BodyError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    check_text(value)
    return value


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, counting brackets outside strings (linear, no
    recursion), so that the parser itself never recurses deeply."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise BodyError(f"JSON nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def check_text(value: Any, where: str = "") -> None:
    """Every string and key in `value` is valid Unicode (no lone surrogates), else BodyError
    naming where (`messages[0].content`). Iterative: depth is bounded by the parser."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                _check_string(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not key.isascii():
                    _check_string(key, path, f"a key in {_short(path) or 'the body'}")
                stack.append((child, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def _check_string(text: str, path: str, what: str | None = None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where, code = what or _short(path) or "the body", ord(text[exc.start])
        raise BodyError(
            f"{where} contains an unpaired surrogate (U+{code:04X} at character "
            f"{exc.start}): send valid Unicode text",
            _short(path) or None,
        ) from None


def _short(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."
