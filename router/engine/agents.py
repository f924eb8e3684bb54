"""Coding agents' traffic by scenario, and one model per session ([agents] in models.toml).

An agent's requests are not alike. Claude Code sends, beside each turn, tool-less side requests
(a title, "is this a new topic?", a summary) that a small model answers as well as a large one;
its turns carry tools; some ask for extended thinking; a long session outgrows a model's
context. claude-code-router routes these by scenario; so does this module. A request is an
agent's when it came through the Messages or Responses API or names a session. In order:

- `long_context`: a prompt of more than `long_context_tokens` goes to that model;
- `thinking`: a request asking for extended thinking (Anthropic's `thinking`) goes to that
  model;
- `background`: a request with no tools and no tool calls in its history goes to that model or
  mode (`local`, or a cheap cloud model) when the prompt fits it, else as it came;
- `tools`: a turn that carries tools goes to that model.

Sticky sessions (`sticky = true`): a session keeps the model its turns went to. A turn the score
would send to a cheaper model stays where the session is (the provider's prompt cache stays
warm: moving down mid-session reads the whole history again at the full price); a turn the
score sends to a dearer model moves the session up, and the reason says so. A model the client
names is followed (and is the session's from then on). Background requests neither follow nor
move the session. Sessions are remembered in this process, the
last `MAX_SESSIONS`, for `sticky_seconds` after their last turn.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace

from router.config import Config, Price
from router.engine.policy import ModelView, blockers, estimate_prompt_tokens
from router.types import ROUTING_MODES, ChatRequest, Decision

MAX_SESSIONS = 10_000


def is_agent(request: ChatRequest) -> bool:
    return request.api in ("messages", "responses") or request.session is not None


def has_tools(request: ChatRequest) -> bool:
    """Whether the request carries tools, or its history holds tool calls and results."""
    if request.params.get("tools"):
        return True
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in request.messages)


def thinks(request: ChatRequest) -> bool:
    """Whether the request asks for extended thinking: Anthropic's `thinking` enabled (the
    Responses API's `reasoning` is dropped at the edge, and chat takes no such parameter)."""
    body = request.native.body if request.native is not None else {}
    thinking = body.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


class Agents:
    def __init__(self, config: Config, prices: Mapping[str, Price]) -> None:
        self._config = config
        self._settings = config.agents
        self._prices = prices
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def route(
        self, request: ChatRequest, views: Mapping[str, ModelView]
    ) -> tuple[ChatRequest, str]:
        """`request` for its scenario's model, and why ("" when no scenario applies)."""
        s = self._settings
        if s is None or not is_agent(request):
            return request, ""
        tokens = estimate_prompt_tokens(request)
        if s.long_context and s.long_context_tokens and tokens > s.long_context_tokens:
            return request.with_model(s.long_context), (
                f"agent long context (~{tokens:,} tokens > {s.long_context_tokens:,}): "
                f"{s.long_context}; "
            )
        if s.thinking and thinks(request):
            return request.with_model(s.thinking), f"agent asks for thinking: {s.thinking}; "
        tools = has_tools(request)
        if s.background and not tools:
            if self._fits(request, s.background, views):
                return request.with_model(s.background), (
                    f"agent background request (no tools): {s.background}; "
                )
            return request, f"agent background request, too large for {s.background}; "
        if s.tools and tools:
            return request.with_model(s.tools), f"agent turn with tools: {s.tools}; "
        return request, ""

    def _fits(self, request: ChatRequest, target: str, views: Mapping[str, ModelView]) -> bool:
        """Whether a model (or, for a mode, one of its tier's) can take the request now."""
        if target in ROUTING_MODES:
            tier = {"local": "local", "cloud": "cloud"}.get(target)
            chosen = [v for v in views.values() if not v.embeddings and tier in (None, v.tier)]
        else:
            chosen = [views[target]] if target in views else []
        room = 256 if request.max_tokens_cap else int(request.params.get("max_tokens", 256))
        needed = estimate_prompt_tokens(request) + room
        return any(
            v.unusable is None and not blockers(v, request.with_model(v.name), needed)
            for v in chosen
        )

    def keep(self, request: ChatRequest, decision: Decision) -> Decision:
        """With sticky sessions: the session's model when the decision would move it down;
        the decision (remembered as the session's) otherwise."""
        s = self._settings
        session = request.session
        background = s is not None and s.background is not None and not has_tools(request)
        if s is None or not s.sticky or session is None or background:
            return decision  # background requests neither follow nor move the session
        if not decision.candidates:
            return decision
        chosen, now = decision.candidates[0], time.monotonic()
        with self._lock:
            known = self._sessions.get(session)
            if known is not None and now - known[1] > s.sticky_seconds:
                known = None
            # A model the client named is its choice: followed, and the session's from now.
            if known is None or decision.forced or self._rank(chosen) >= self._rank(known[0]):
                self._remember(session, chosen, now)
                if known is not None and known[0] != chosen and not decision.forced:
                    why = f"; session moved up from {known[0]} to {chosen}"
                    return replace(decision, reason=decision.reason + why)
                return decision
            pinned = known[0]
            self._remember(session, pinned, now)
        rest = tuple(c for c in decision.candidates if c != pinned)
        why = f"; kept on {pinned}, its session's model (no move down mid-session)"
        return replace(decision, candidates=(pinned, *rest), reason=decision.reason + why)

    def _remember(self, session: str, model: str, now: float) -> None:
        self._sessions[session] = (model, now)
        self._sessions.move_to_end(session)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def _rank(self, name: str) -> float:
        """How far up a model is: free local models at 0, cloud ones by their price."""
        model = self._config.models.get(name)
        if model is None or model.tier == "local":
            return 0.0
        price = self._prices.get(name)
        return 1.0 + (price.input_per_mtok + price.output_per_mtok if price else 0.0)
