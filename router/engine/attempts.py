"""The candidates of a decision, tried in order until one answers.

For each model the decision names: a paid call is written ahead to the ledger (the first one
only: router.engine.bookkeeping), its worst case is reserved on the user's budgets, the call is made
within the request's deadline, and a failure moves on to the next model. A cloud model that
refused the call as configured or as written (401, 404, 400) is not answered locally instead.
When every model failed, the request's pending row goes and the error says why.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from router.backends import deadline
from router.backends import hangup as hangups
from router.backends import retry as retries
from router.config import CloudModel, Config, Price
from router.engine import policy
from router.engine.bookkeeping import Books
from router.engine.policy import ModelView
from router.errors import (
    BackendError,
    BudgetExceededError,
    BudgetStoreDownError,
    ClientGoneError,
    CloudError,
    CloudRefusedError,
    LedgerUnavailableError,
    UnavailableError,
)
from router.governance.alerts import Alerts
from router.governance.budgets import BudgetStore, Reservation, key_budgets, shortened
from router.types import ChatRequest, Decision, Routing
from router.units import Tokens

T = TypeVar("T")


class Attempts:
    def __init__(
        self,
        config: Config,
        budgets: BudgetStore,
        books: Books,
        prices: dict[str, Price],
        alerts: Alerts | None = None,
    ) -> None:
        self._config = config
        self._budgets = budgets
        self._books = books
        self._prices = prices
        self._alerts = alerts  # [alerts]: budgets' shares, burn rate, failing cloud models
        self._settled = threading.Condition()  # notified when a reservation settles

    def first_answer(
        self,
        request: ChatRequest,
        decision: Decision,
        params: dict[str, Any],
        call: Callable[[str, dict[str, Any]], T],
        response_id: str,
        *,
        stream: bool,
        views: Mapping[str, ModelView],
    ) -> tuple[T, Routing, Reservation | None]:
        """`call(model, params)` on the candidates in order: the first result, the routing
        that says how it came (attempts, fallbacks, a budget cut) and the budget held for it
        (settle it with `settle` once the answer's usage is known)."""
        try:
            name, result, reservation, failures, shown = self._try(
                request, decision, params, call, response_id, stream, views
            )
        except BaseException:
            self._books.abandon(response_id)
            raise
        routing = self._routing(decision, name, failures, reservation, response_id)
        routing.shown.update((f, s) for f, s in zip(failures, shown, strict=True) if f != s)
        model = self._config.models[name]
        if (
            request.native is not None
            and isinstance(model, CloudModel)
            and model.speaks(request.api)
        ):
            routing.reason += f"; passed to {name} as it came ({request.api} API)"
            if request.native.dropped:  # outside the API's allow-list (backends.native)
                routing.reason += (
                    f"; not passed on: {', '.join(request.native.dropped)} "
                    "(not a request field this router passes)"
                )
        elif request.dropped:  # what the translation into a chat request could not carry
            routing.reason += (
                f"; dropped {', '.join(request.dropped)} (not carried to a chat model)"
            )
        return result, routing, reservation

    def settle(self, reservation: Reservation | None, routing: Routing) -> None:
        """Settle to the real usage: the dollars paid, and the tokens a budget counts
        (Price.budget_tokens: cache reads at their price's share)."""
        if reservation is not None:
            tokens = Tokens(
                routing.prompt_tokens,
                routing.completion_tokens,
                routing.cache_read_tokens,
                routing.cache_write_tokens,
            )
            counted = math.ceil(self._prices[routing.model].budget_tokens(tokens))
            self._budgets.settle(reservation, counted, routing.cost_usd)
        if self._alerts is not None and (reservation is not None or routing.cost_usd > 0):
            scopes = reservation.budgets if reservation is not None else ()
            extra = reservation.extra if reservation is not None else ()
            self._alerts.settled(self._budgets, scopes, routing.cost_usd, extra)
        self._wake_waiters(reservation)

    def _release(self, reservation: Reservation | None) -> None:
        self._budgets.release(reservation)
        self._wake_waiters(reservation)

    def _wake_waiters(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            with self._settled:
                self._settled.notify_all()

    def _try(
        self,
        request: ChatRequest,
        decision: Decision,
        params: dict[str, Any],
        call: Callable[[str, dict[str, Any]], T],
        response_id: str,
        stream: bool,
        views: Mapping[str, ModelView],
    ) -> tuple[str, T, Reservation | None, list[str], list[str]]:
        """The model that answered, its answer and reservation, and the failures before it:
        in the operator's words and in a client's."""
        failures: list[str] = []
        shown: list[str] = []  # the same, as clients may read them (RouterError.public)
        unrecorded: LedgerUnavailableError | None = None
        written_ahead = False
        refused: list[CloudError] = []  # cloud calls refused as configured, or as written
        spent: BudgetExceededError | BudgetStoreDownError | None = None
        retry_after: float | None = None
        ends = time.monotonic() + self._config.retry.deadline_seconds
        hangup = hangups.current()
        for name in decision.candidates:
            paid = self._config.models[name].tier == "cloud"
            if name in views:  # max_tokens as this model may take it
                room = policy.answer_room(views[name], request, int(params["max_tokens"]))
                params = {**params, "max_tokens": room}
            if refused and not paid:
                break  # only a transient cloud failure is answered locally instead
            if hangup is not None and hangup.fired:
                raise ClientGoneError("the client hung up; no other model is tried")
            if paid and not written_ahead:
                try:
                    self._books.begin(request, decision, name, params, response_id, stream=stream)
                except LedgerUnavailableError as exc:
                    unrecorded = exc  # no paid call that could not be recorded
                    failures.append(f"{name} skipped: {exc}")
                    shown.append(f"{name} skipped: {exc.public}")
                    continue
                written_ahead = True
            try:
                reservation = self._reserve(request, name, params, ends) if paid else None
            except (BudgetExceededError, BudgetStoreDownError) as exc:
                if exc.policy != "local-only":
                    raise
                spent = exc
                failures.append(f"{name} skipped: {exc}")
                shown.append(f"{name} skipped: {exc.public}")
                continue
            try:
                with deadline.until(ends), retries.at_most(0 if request.client_retries else None):
                    result = call(name, shortened(params, reservation))
            except BackendError as exc:
                self._release(reservation)
                if paid and self._alerts is not None:
                    self._alerts.call_failed(name, str(exc))
                failures.append(str(exc))
                shown.append(exc.public)
                if isinstance(exc, CloudError) and exc.status and not exc.retryable:
                    refused.append(exc)
                if exc.retry_after is not None:
                    retry_after = max(retry_after or 0.0, exc.retry_after)
                continue
            except BaseException:
                self._release(reservation)
                raise
            if paid and self._alerts is not None:
                self._alerts.call_worked(name)
            return name, result, reservation, failures, shown
        if unrecorded is not None:
            raise unrecorded
        if spent is not None:
            raise spent
        if refused:
            raise CloudRefusedError(failures, refused, shown)
        raise UnavailableError(
            f"every model failed: {'; '.join(failures)}", retry_after=retry_after
        ).publicly(f"every model failed: {'; '.join(shown)}")

    def _reserve(
        self, request: ChatRequest, name: str, params: dict[str, Any], ends: float
    ) -> Reservation | None:
        """Reserve a cloud call's worst case on the user's budgets. When only calls still
        running stand in the way, wait for them (at most `budget_wait_seconds`, within the
        deadline): each settles to what it used, mostly far below the worst case it held,
        so a burst of small requests is served instead of refused."""
        if request.user is None:
            return None
        prompt, completion = policy.worst_prompt_tokens(request), int(params["max_tokens"])
        until = min(time.monotonic() + self._config.retry.budget_wait_seconds, ends)
        while True:
            try:
                return self._budgets.reserve_call(
                    request.user,
                    prompt,
                    completion,
                    self._prices[name],
                    shorten="max_tokens" not in request.params,
                    expected=lambda: self._expected(request.user, name),
                    session=request.session,
                    extra=key_budgets(request.user, request.key_budget),
                )
            except BudgetExceededError as exc:
                left = until - time.monotonic()
                if not exc.in_flight or left <= 0:
                    raise
                with self._settled:  # woken by a settlement here; another replica's: polled
                    self._settled.wait(min(0.25, left))

    def _expected(self, user: str | None, name: str) -> int:
        """The completion a reservation expects: [router] reserve_completion_tokens, else
        from the user's recent answers on `name` (the ledger; remembered for a minute)."""
        fixed = self._config.router.reserve_completion_tokens
        if fixed is not None:
            return fixed
        return self._books.expected_completion(user, name)

    def _wanted_cloud(self, decision: Decision, name: str) -> bool:
        """Whether routing by score would have had the cloud answer, not local `name`: a cloud
        candidate came before it, or the score is above its ceiling (no cloud model usable, a
        budget or guardrail keeping the request local). A tier or model asked for by name
        was nobody's fallback."""
        if decision.forced:
            return False
        models = self._config.models
        order = decision.candidates
        ahead = order[: order.index(name)] if name in order else ()
        taken = getattr(models[name], "categories", None) or ()
        outside = bool(taken) and decision.category not in taken
        return (
            decision.score > models[name].max_score
            or outside
            or any(models[n].tier == "cloud" for n in ahead)
        )

    def _routing(
        self,
        decision: Decision,
        name: str,
        failures: list[str],
        reservation: Reservation | None,
        response_id: str,
    ) -> Routing:
        model = self._config.models[name]
        tier = model.tier
        reason = decision.reason
        saved_by = ""
        if tier == "local":  # a fallback when the score sent the request to the cloud
            saved_by = "fallback" if self._wanted_cloud(decision, name) else "routed"
        if failures:
            how = f"answered locally by {name}" if tier == "local" else f"fell back to {name}"
            reason = f"{reason}; {'; '.join(failures)}: {how}"
        if reservation is not None and reservation.cut:
            # Noted as an attempt too, so that the shortened answer is not cached for others.
            failures = [*failures, f"max_tokens lowered by {reservation.cut} to fit the budget"]
            reason = f"{reason}; {failures[-1]}"
        return Routing(
            response_id=response_id,
            tier=tier,
            model=name,
            score=decision.score,
            reason=reason,
            attempts=list(failures),
            category=decision.category,
            flags=list(decision.flags),
            saved_by=saved_by,
        )
