"""The ledger rows of a router's requests, and what happens when the ledger cannot take one.

- A paid call is written ahead: before the call, a pending row with its worst case (the
  tokens and dollars it may use); the answer's row then replaces it. So the router never pays
  for an answer it cannot record: when the pending row cannot be written, the call is not made
  (LedgerUnavailableError: in `auto` a local model answers instead, else the client gets 503
  `ledger_unavailable`). A router that dies mid-call leaves the pending row, which says so.
- A free answer (a local model, a cache hit) is recorded once made; when the ledger cannot
  take its row the answer is served all the same, and the failure is logged and counted
  (`/health` says `degraded`, `/metrics` counts `router_ledger_write_failures_total`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from router.config import Config, Price
from router.engine import policy
from router.engine.cache import sampled
from router.errors import LedgerUnavailableError, RouterError
from router.governance.alerts import Alerts
from router.governance.audit import Account, audit
from router.governance.budgets import expected_completion
from router.governance.export import stored_answer
from router.governance.waste import RepeatDetector
from router.ledger import Entry, Ledger
from router.types import ChatRequest, Decision, Routing

log = logging.getLogger("router.ledger")
EXPECTED_ROWS = 200  # the user's last rows an expected completion is read from
EXPECTED_SECONDS = 60.0
AUDIT_DAYS = 30  # the window the alerts' audit reads, `router audit`'s default

UNFINISHED = (
    "paid call not seen to finish: the router stopped before its answer came; the tokens and "
    "cost are the most it could have used"
)


class Books:
    """Writes the rows of one router's requests to its ledger."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        repeats: RepeatDetector,
        prices: dict[str, Price],
        estimator: str,
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._repeats = repeats
        self._prices = prices
        self._estimator = estimator
        self.alerts: Alerts | None = None  # [alerts]: a row the ledger did not take
        self._expected: dict[tuple[str | None, str], tuple[int, float]] = {}

    def begin(
        self,
        request: ChatRequest,
        decision: Decision,
        name: str,
        params: dict[str, Any],
        response_id: str,
        *,
        stream: bool,
    ) -> None:
        """Write the pending row of a paid call to `name`, with its worst case; raises
        LedgerUnavailableError when it cannot be written (then the call must not be made)."""
        prompt, completion = policy.worst_prompt_tokens(request), int(params["max_tokens"])
        routing = Routing(
            tier="cloud",
            model=name,
            score=decision.score,
            reason=UNFINISHED,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self._prices[name].cost(prompt, completion),
            category=decision.category,
            flags=list(decision.flags),
            response_id=response_id,
        )
        try:
            self._ledger.begin(self._entry(request, routing, stream, pending=True))
        except LedgerUnavailableError as exc:
            if self.alerts is not None:
                self.alerts.ledger_failed(str(exc))
            raise

    def abandon(self, response_id: str) -> None:
        """Every model failed: remove the request's pending row, if it has one."""
        try:
            self._ledger.abandon(response_id)
        except LedgerUnavailableError:
            log.error("request %s failed; its pending row stays (the ledger is down)", response_id)

    def record(
        self,
        request: ChatRequest,
        key: str,
        routing: Routing,
        started: float,
        *,
        stream: bool,
        answer: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the row of an answered request (in place of its pending row, if it had one)
        and count it for repeat detection. `answer`: its assistant message (kept with the
        prompt when prompts are stored)."""
        entry = self._answered(request, key, routing, started, stream, answer)
        try:
            if routing.cache_hit:  # never written ahead
                self._ledger.record(entry)
            else:
                self._ledger.finish(entry)
        except LedgerUnavailableError:
            self._not_taken(routing)
            return
        if self.alerts is not None and routing.tier == "cloud" and not routing.cache_hit:
            self.alerts.paid_row(self.audit)

    def audit(self) -> list[Account]:
        """`router audit`'s accounts over its default window: each user (`user:NAME`) and
        each team (`team:NAME`), with their flags (the alerts' audit_flag)."""
        since = time.time() - AUDIT_DAYS * 86400
        users = audit(self._ledger, self._config, since=since)
        found = [replace(a, name=f"user:{a.name}") for a in users]
        if self._config.teams:
            teams = audit(self._ledger, self._config, "team", since=since)
            found += [replace(a, name=f"team:{a.name}") for a in teams]
        return found

    async def arecord_hit(
        self,
        request: ChatRequest,
        key: str,
        routing: Routing,
        started: float,
        *,
        stream: bool = False,
        answer: Mapping[str, Any] | None = None,
    ) -> None:
        """`record` of a cache hit, from the server's event loop (Ledger.arecord)."""
        entry = self._answered(request, key, routing, started, stream, answer)
        try:
            await self._ledger.arecord(entry)
        except LedgerUnavailableError:
            self._not_taken(routing)

    def expected_completion(self, user: str | None, model: str) -> int:
        """The completion a budget reserves for `user`'s next call to `model`: the 95th
        percentile of their last answers from it (router.governance.budgets), remembered
        for EXPECTED_SECONDS."""
        now = time.monotonic()
        known = self._expected.get((user, model))
        if known is not None and now - known[1] < EXPECTED_SECONDS:
            return known[0]
        try:
            rows = self._ledger.recent(EXPECTED_ROWS, user)
        except Exception:  # a ledger that cannot be read now: the floor
            rows = []
        found = expected_completion(
            [
                r.completion_tokens
                for r in rows
                if r.model == model and not r.refusal and not r.pending
            ]
        )
        if len(self._expected) > 10_000:
            self._expected.clear()
        self._expected[(user, model)] = (found, now)
        return found

    @contextmanager
    def refusals(self, request: ChatRequest, started: float) -> Iterator[None]:
        """Record the refusal (RouterError.refusal) a request gets in this block."""
        try:
            yield
        except RouterError as exc:
            if exc.refusal:
                self.refused(request, exc, started)
            raise

    def refused(self, request: ChatRequest, exc: RouterError, started: float) -> None:
        """Write the row of a refused request: zero tokens, the refusal as its reason (so the
        audit and the dashboard count who was refused, and how often)."""
        entry = Entry(
            ts=time.time(),
            user=request.user,
            tier="none",
            model=self._config.resolve(request.model),
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            baseline_usd=0.0,
            tokens_saved=0,
            usd_saved=0.0,
            cache_hit=False,
            latency_ms=(time.perf_counter() - started) * 1000,
            score=0.0,
            reason=f"refused: {exc}",
            estimator=self._estimator,
            api=request.api,
            session=request.session or "",
            refusal=exc.refusal,
        )
        try:
            self._ledger.record(entry)
        except LedgerUnavailableError:
            log.error("the ledger did not take the row of a refusal (%s)", exc.refusal)

    def _answered(
        self,
        request: ChatRequest,
        key: str,
        routing: Routing,
        started: float,
        stream: bool,
        answer: Mapping[str, Any] | None,
    ) -> Entry:
        routing.latency_ms = (time.perf_counter() - started) * 1000
        if not sampled(request.params):
            self._repeats.answered(request.user, key)
        return self._entry(request, routing, stream, answer=answer)

    def _not_taken(self, routing: Routing) -> None:
        if self.alerts is not None:
            self.alerts.ledger_failed(f"the row of {routing.response_id} was not taken")
        paid = routing.tier == "cloud" and not routing.cache_hit
        log.error(
            "the ledger did not take the row of %s (%s, %s): %s",
            routing.response_id,
            routing.tier,
            routing.model,
            "its pending row stays, with the call's worst case"
            if paid
            else "a free answer, served all the same",
        )

    def _entry(
        self,
        request: ChatRequest,
        routing: Routing,
        stream: bool,
        *,
        pending: bool = False,
        answer: Mapping[str, Any] | None = None,
    ) -> Entry:
        prompt = said = None
        if self._config.router.store_prompts:
            prompt = json.dumps(request.messages, ensure_ascii=False)
            if answer is not None:
                said = stored_answer(answer)
        return Entry.from_routing(
            routing,
            user=request.user,
            session=request.session or "",
            stream=stream,
            estimator=self._estimator,
            prompt=prompt,
            answer=said,
            pending=pending,
            api=request.api,
        )
