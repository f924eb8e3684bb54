"""Who asks, and in which session, from what coding agents send.

A session is the conversation or agent run a request belongs to: the ledger records it
(`router stats --by session`, `router logs --session`), budgets may cap it, and agent routes
keep its model. Where it comes from, first found wins:

- `x-session-id`, a header any client may send (a bad one is a 400 naming it);
- Claude Code's `X-Claude-Code-Session-Id`, Codex's `session-id` / `session_id` and
  `conversation_id` headers (one that is not an id is ignored, not refused);
- in the body: Claude Code's `metadata.user_id` (its session part) and the Responses API's
  `prompt_cache_key` (Codex sets it to its session).

Codex names no user in its body; its `x-codex-turn-metadata` header names its installation,
which is the user (`device-…`) of a Codex request that has no key and names no user.

Claude Code's `metadata.user_id` names a device, an account and a session, as JSON
(`{"device_id": …, "account_uuid": …, "session_id": …}`) or as the older
`user_<device>_account_<uuid>_session_<uuid>`. Its user is the account, else the device
(`device-` and its first 16 characters): the same person in every session, where the whole
string was a new user each time. An API key's owner wins over anything in the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from router.types import MAX_SESSION
from router.wire.http import HTTPError

SESSION_HEADER = "x-session-id"
# Agents' own session headers, in the order they are read after SESSION_HEADER.
AGENT_SESSION_HEADERS = ("x-claude-code-session-id", "session-id", "session_id", "conversation_id")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]*$")
_LEGACY = re.compile(
    r"^user_(?P<device>[0-9a-fA-F]{8,128})_account_(?P<account>[0-9a-fA-F-]{0,64})"
    r"_session_(?P<session>[0-9a-fA-F-]{8,64})$"
)


def session_id(value: Any) -> str | None:
    """`value` as a session id (letters, digits and ._:@+=-, at most MAX_SESSION), or None."""
    if isinstance(value, str) and len(value) <= MAX_SESSION and _ID.match(value):
        return value
    return None


CODEX_METADATA = "x-codex-turn-metadata"  # Codex's JSON: installation_id, session_id, ...
_NAMES = frozenset(n.encode() for n in (SESSION_HEADER, *AGENT_SESSION_HEADERS, CODEX_METADATA))


def raw_identity(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(session, device user) from an ASGI scope's raw headers, in one pass (most requests
    have none of them: the hot path pays one set lookup a header). The device user is Codex's
    installation (`device-` and its first 16 characters), the user of a request that names
    none otherwise."""
    found = {k.decode(): v.decode("latin-1") for k, v in raw if k in _NAMES}
    if not found:
        return None, None
    return header_session(found), codex_device(found.get(CODEX_METADATA))


def codex_device(metadata: str | None) -> str | None:
    """The user Codex's turn metadata names: its installation, as a device."""
    if metadata is None or len(metadata) > 8192:
        return None
    try:
        data = json.loads(metadata)
    except ValueError:
        return None
    return _person(None, data.get("installation_id")) if isinstance(data, dict) else None


def header_session(headers: Mapping[str, str]) -> str | None:
    """The session the headers name; HTTPError(400) for a bad `x-session-id`."""
    given = headers.get(SESSION_HEADER)
    if given is not None:
        found = session_id(given)
        if found is None:
            raise HTTPError(
                400,
                f"{SESSION_HEADER}: a session id is 1 to {MAX_SESSION} letters, digits and "
                "._:@+=- (a UUID fits)",
                param=SESSION_HEADER,
                code="invalid_session",
            )
        return found
    for name in AGENT_SESSION_HEADERS:
        found = session_id(headers.get(name))
        if found is not None:
            return found
    return None


def agent_user(user_id: str) -> tuple[str | None, str | None]:
    """(user, session) from Claude Code's `metadata.user_id`; (None, None) for any other
    string (a plain user name is the user as it is)."""
    text = user_id.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None, None
        if not isinstance(data, dict) or not {"device_id", "session_id"} & set(data):
            return None, None
        return _person(data.get("account_uuid"), data.get("device_id")), session_id(
            data.get("session_id")
        )
    found = _LEGACY.match(text)
    if found is None:
        return None, None
    return _person(found.group("account"), found.group("device")), session_id(
        found.group("session")
    )


def _person(account: Any, device: Any) -> str | None:
    if isinstance(account, str) and session_id(account):
        return account
    if isinstance(device, str) and session_id(device):
        return f"device-{device[:16]}"
    return None
