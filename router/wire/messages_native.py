"""What of an Anthropic Messages request may reach a model that speaks Anthropic's API as it
came (router.backends.native): the allow-listed fields of its body (NATIVE), checked, and its
`anthropic-version` and `anthropic-beta` headers, checked. What is left out is named, for the
ledger's reason. A body can therefore never name one of LiteLLM's own arguments
(`custom_llm_provider`, `api_base`, `mock_response`, `extra_headers`...)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from router.backends.native import NATIVE
from router.types import Native
from router.wire.api import bad
from router.wire.http import HTTPError

# Objects passed as they are (their contents are Anthropic's to check).
_NATIVE_OBJECTS = ("thinking", "context_management", "output_config", "cache_control")
# LiteLLM runs tools of these types itself instead of passing them on (its advisor loop calls
# the model, key and base URL the tool names): never passed.
_INTERCEPTED_TOOLS = ("advisor",)
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
_BETA = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+){0,15}")


class Dropped:
    """What a translation could not carry, or the passthrough left out, by name, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.more = 0  # names past the first 16

    def add(self, name: str) -> None:
        name = name[:40]
        if name in self.names:
            return
        if len(self.names) < 16:
            self.names.append(name)
        else:
            self.more += 1

    def all(self) -> tuple[str, ...]:
        return (*self.names, f"{self.more} more") if self.more else tuple(self.names)


def native(data: Mapping[str, Any], forward: tuple[tuple[str, str], ...]) -> Native:
    """What of a checked body and its headers may reach a model that speaks Messages: the
    NATIVE fields (`metadata` as its `user_id` alone, no tool LiteLLM would run itself) and
    the checked `anthropic-version` and `anthropic-beta` headers; HTTPError(400) for a
    malformed header."""
    body: dict[str, Any] = {}
    left_out = Dropped()
    for name in data:
        if name not in NATIVE and name != "stream":
            left_out.add(name)
    for name in NATIVE:
        value = data.get(name)
        if value is None:
            continue
        if (name in _NATIVE_OBJECTS or name == "tool_choice") and not isinstance(value, dict):
            raise bad(name, "an object")
        if name == "top_k" and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad(name, "a non-negative integer")
        if name == "metadata":
            value = {"user_id": value["user_id"]} if "user_id" in value else {}
            if len(data[name]) > len(value):
                left_out.add("metadata other than user_id")
            if not value:
                continue
        if name == "tools":
            value = [t for t in value if not _intercepted(t)]
            if len(value) < len(data[name]):
                left_out.add("advisor tools")
        body[name] = value
    return Native(body, native_headers(forward), left_out.all())


def _intercepted(tool: Mapping[str, Any]) -> bool:
    kind = tool.get("type")
    return isinstance(kind, str) and kind.startswith(_INTERCEPTED_TOOLS)


def native_headers(forward: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The client's `anthropic-version` (a date) and `anthropic-beta` (a comma-separated list
    of up to 16 beta names, such as `context-management-2025-06-27`), rebuilt from the values
    that match, for the provider; HTTPError(400) for anything else."""
    out: dict[str, str] = {}
    for name, value in forward:
        if name == "anthropic-version":
            if not _VERSION.fullmatch(value.strip()):
                raise _bad_header(name, "a date such as 2023-06-01")
            out[name] = value.strip()
        elif name == "anthropic-beta":
            betas = [b.strip() for b in value.split(",") if b.strip()]
            if len(betas) > 16 or not all(len(b) <= 64 and _BETA.fullmatch(b) for b in betas):
                expected = "up to 16 comma-separated names such as context-management-2025-06-27"
                raise _bad_header(name, expected)
            if betas:
                out[name] = ",".join(betas)
    return out


def _bad_header(name: str, expected: str) -> HTTPError:
    return HTTPError(400, f"the {name} header must be {expected}", param=name)
